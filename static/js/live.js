// Live regions ([data-live], polled by htmx): no polling while the tab is hidden, one refresh when
// it shows again. Written as listeners, not hx-trigger filters, because a filter needs eval and the
// Content-Security-Policy allows only scripts from this site.
(function () {
  document.addEventListener("htmx:beforeRequest", function (event) {
    var element = event.detail.elt;
    if (document.visibilityState !== "visible" && element.closest && element.closest("[data-live]") === element) {
      event.preventDefault();
    }
  });
  document.addEventListener("visibilitychange", function () {
    if (document.visibilityState === "visible") {
      document.dispatchEvent(new Event("nightingale:visible"));
    }
  });
})();
