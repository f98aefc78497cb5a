"""Raw embedding throughput: `model.encode` texts per second at batch sizes 8, 16, 32 and 128.

    .venv/bin/python bench/embed.py [--texts 256] [--repeats 3] [--batch-sizes 8,16,32,128]

The texts are real threat-intelligence prose: the threat-actor descriptions of the MISP galaxy
shipped in `pymispgalaxies` (generated sentences when it is not installed), with their lengths as
they come, so the model truncates the longest at its 256-token window as it would in production.
Each batch size gets a warm-up pass, then `--repeats` timed passes over the same texts; the median
is printed with the spread. The model is loaded like the app loads it (EMBEDDING_MODEL and
EMBEDDING_DEVICE from the environment, offline); no Django settings or services are needed.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def threat_actor_texts(count: int) -> tuple[list[str], str]:
    """`count` texts and where they came from."""
    try:
        from pymispgalaxies import Clusters

        cluster = Clusters().get("threat-actor")
        descriptions = sorted({(value.description or "").strip() for value in cluster.cluster_values.values()})
        descriptions = [d for d in descriptions if len(d) >= 40]
    except ImportError:
        descriptions = []
    if descriptions:
        rng = random.Random(7)
        # Sample with a fixed seed so runs compare; repeat the pool when asked for more than it has.
        texts = [rng.choice(descriptions) for _ in range(count)]
        return texts, f"pymispgalaxies threat-actor descriptions ({len(descriptions)} distinct)"
    return generated_texts(count), "generated threat-intel sentences (pymispgalaxies not importable)"


def generated_texts(count: int) -> list[str]:
    rng = random.Random(7)
    actors = ["APT29", "Lazarus Group", "Sandworm", "FIN7", "Scattered Spider", "Volt Typhoon", "APT41"]
    verbs = ["exploited", "phished staff at", "deployed ransomware on", "exfiltrated data from",
             "moved laterally through", "gained persistence on"]
    targets = ["VPN gateways", "hospital networks", "payment processors", "Exchange servers",
               "industrial control systems", "cloud tenants", "telecom core networks"]
    texts = []
    for _ in range(count):
        sentences = [
            f"{rng.choice(actors)} {rng.choice(verbs)} {rng.choice(targets)} using "
            f"CVE-{rng.randint(2015, 2025)}-{rng.randint(1000, 99999)}."
            for _ in range(rng.randint(1, 12))
        ]
        texts.append(" ".join(sentences))
    return texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--texts", type=int, default=256, help="texts per timed pass (default 256)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per batch size (default 3)")
    parser.add_argument("--batch-sizes", default="8,16,32,128", help="comma-separated (default 8,16,32,128)")
    args = parser.parse_args()
    batch_sizes = [int(size) for size in args.batch_sizes.split(",")]

    logging.basicConfig(level=logging.WARNING)
    import torch

    from sync.embedding import BUNDLED_MODEL, Embedder

    embedder = Embedder(os.environ.get("EMBEDDING_MODEL", BUNDLED_MODEL), os.environ.get("EMBEDDING_DEVICE", ""))
    started = time.perf_counter()
    model = embedder.model
    load_seconds = time.perf_counter() - started
    texts, source = threat_actor_texts(args.texts)
    full_lengths = [len(encoding.ids) for encoding in embedder.tokenizer.encode_batch(texts)]
    lengths = [min(length, model.max_seq_length) for length in full_lengths]
    truncated = sum(1 for length in full_lengths if length > model.max_seq_length)

    print(f"model      {embedder.name} on {embedder.device}, loaded in {load_seconds:.1f}s")
    print(f"torch      {torch.__version__}, {torch.get_num_threads()} threads (intra-op), "
          f"{os.cpu_count()} CPUs visible")
    print(f"texts      {len(texts)} from {source}")
    print(f"tokens     mean {statistics.mean(lengths):.0f}, median {statistics.median(lengths):.0f}, "
          f"max {max(lengths)} per text (window {model.max_seq_length}; {truncated} texts truncated)")
    print(f"passes     1 warm-up + {args.repeats} timed per batch size")
    # Other processes share the CPUs on a dev machine: the load says how much these figures suffer.
    print(f"load       {' '.join(f'{load:.1f}' for load in os.getloadavg())} (1/5/15 min) at start")
    print()
    print(f"{'batch':>5}  {'texts/s median':>14}  {'min':>7}  {'max':>7}  {'ms/text':>7}")
    for batch_size in batch_sizes:
        model.encode(texts[:batch_size * 2], batch_size=batch_size, show_progress_bar=False,
                     normalize_embeddings=True, convert_to_numpy=True)
        rates = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            vectors = model.encode(texts, batch_size=batch_size, show_progress_bar=False,
                                   normalize_embeddings=True, convert_to_numpy=True)
            rates.append(len(texts) / (time.perf_counter() - started))
            if vectors.shape != (len(texts), embedder.model_info().dimension):
                raise SystemExit(f"unexpected output shape {vectors.shape}")
        median = statistics.median(rates)
        print(f"{batch_size:>5}  {median:>14.1f}  {min(rates):>7.1f}  {max(rates):>7.1f}  {1000 / median:>7.1f}",
              flush=True)


if __name__ == "__main__":
    main()
