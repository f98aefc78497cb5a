"""One module per page (UI.md); each view parses the request, calls sync/, and renders."""
