"""Search: semantic search over the vector index, each hit joined to its graph node and marked
in sync, stale (both versions), missing from graph or excluded; the search canary's last rounds."""

from django.http import HttpResponseBadRequest
from django.shortcuts import render

from dashboard.access import viewer_required
from sync.observe import readings
from sync.policy import synced_labels
from sync.search import query as searching

STATE_WORDS = {"in_sync": "in sync", "stale": "stale", "vector_ahead": "vector ahead of graph",
               "missing_from_graph": "missing from graph", "excluded": "excluded", "unknown": "not joined"}
BADGE = {"missing_from_graph": "failed", "excluded": "excluded", "vector_ahead": "conflict", "unknown": "pending"}


@viewer_required
def index(request):
    text = request.GET.get("q", "")
    label = request.GET.get("label", "").strip()
    if label and label not in synced_labels():
        return HttpResponseBadRequest(f"label must be one of {', '.join(synced_labels())}\n",
                                      content_type="text/plain; charset=utf-8")
    raw_k = request.GET.get("k", "").strip() or "10"
    results = None
    if text.strip():
        try:
            results = searching.search(text, label=label, top_k=int(raw_k) if raw_k.isdigit() else 0)
        except searching.BadQuery as exc:
            return HttpResponseBadRequest(f"{exc}\n", content_type="text/plain; charset=utf-8")
    hits = [(hit, BADGE.get(hit.state, hit.state), STATE_WORDS.get(hit.state, hit.state))
            for hit in (results.hits if results else [])]
    return render(request, "dashboard/search.html", {
        "text": text, "label": label, "k": raw_k, "labels": synced_labels(), "results": results, "hits": hits,
        "max_k": searching.MAX_TOP_K, "canary": readings.canary_recent_rounds(),
    })
