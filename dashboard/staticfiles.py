"""plotly.min.js served from the plotly package as the static file `plotly/plotly.min.js`.

The package ships its bundle in plotly/package_data beside 5 MB of other files (a widget bundle,
datasets) that must not become static files, so this finder exposes that one file only.
"""

from pathlib import Path

import plotly
from django.contrib.staticfiles.finders import BaseFinder
from django.core.files.storage import FileSystemStorage

PACKAGE_DATA = Path(plotly.__file__).resolve().parent / "package_data"
PREFIX = "plotly"
FILES = ("plotly.min.js",)


class PlotlyFinder(BaseFinder):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.storage = FileSystemStorage(location=str(PACKAGE_DATA))
        self.storage.prefix = PREFIX

    def check(self, **kwargs):
        from django.core.checks import Error

        missing = [name for name in FILES if not (PACKAGE_DATA / name).is_file()]
        return [Error(f"the plotly package has no {name} in {PACKAGE_DATA}", id="dashboard.E001") for name in missing]

    def find(self, path, find_all=False, **kwargs):
        for name in FILES:
            if path == f"{PREFIX}/{name}":
                found = str(PACKAGE_DATA / name)
                return [found] if find_all else found
        return [] if find_all else None

    def list(self, ignore_patterns):
        for name in FILES:
            yield name, self.storage
