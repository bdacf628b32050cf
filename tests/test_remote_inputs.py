"""Inputs at any path GDAL opens (tiler/raster/sources.py): a COG served over HTTP by a real server
on 127.0.0.1 that answers range requests, read window by window through GDAL's /vsicurl/, gives the
output of the local file; an unreachable URL is a one-line error. (S3 is not tested: no
S3-compatible server is installed here; ``s3://`` URLs go to GDAL's /vsis3/ the same way.)"""

from __future__ import annotations

import http.server
import os
import re
import threading
from pathlib import Path

import numpy as np
import pytest
import rasterio
from conftest import make_raster, read_raster, run_tiler
from test_errors import assert_one_error

from tiler.raster.sources import gdal_path, is_virtual


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Serves the folder with HTTP range requests (GDAL's /vsicurl/ reads windows with them) and
    records the bytes of each response body."""

    served: list[int] = []

    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        path = Path(self.translate_path(self.path))
        if not match or not path.is_file():
            return super().do_GET()
        data = path.read_bytes()
        start = int(match.group(1))
        stop = min(int(match.group(2) or len(data) - 1), len(data) - 1)
        body = data[start : stop + 1]
        self.send_response(206)
        self.send_header("Content-Type", "image/tiff")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Range", f"bytes {start}-{stop}/{len(data)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.served.append(len(body))


@pytest.fixture
def server(tmp_path):
    """(base URL, the served folder, the list of body sizes served)."""
    folder = tmp_path / "served"
    folder.mkdir()
    served: list[int] = []
    handler = type("Handler", (RangeHandler,), {"served": served})
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), lambda *a: handler(*a, directory=str(folder))
    )
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", folder, served
    httpd.shutdown()


def make_cog(path: Path, size: int = 512) -> Path:
    source = make_raster(path.with_suffix(".src.tif"), width=size, height=size, count=3)
    with rasterio.open(source) as src:
        profile = src.profile | dict(driver="COG", BLOCKSIZE=128, COMPRESS="DEFLATE")
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(src.read())
    source.unlink()
    return path


def test_paths_gdal_opens_are_translated_and_not_looked_up_on_disk(tmp_path):
    assert gdal_path("https://host/a/scene.tif") == "/vsicurl/https://host/a/scene.tif"
    assert gdal_path("s3://bucket/key/scene.tif") == "/vsis3/bucket/key/scene.tif"
    assert gdal_path("gs://bucket/scene.tif") == "/vsigs/bucket/scene.tif"
    assert gdal_path("/vsizip/archive.zip/scene.tif") == "/vsizip/archive.zip/scene.tif"
    assert is_virtual("/vsis3/bucket/scene.tif") and not is_virtual(tmp_path / "scene.tif")


def test_a_cog_over_http_gives_the_local_output_streamed_by_windows(tmp_path, server):
    base, folder, served = server
    cog = make_cog(folder / "scene.tif")
    size = cog.stat().st_size
    url = f"{base}/scene.tif"
    workdir = tmp_path / "work"
    workdir.mkdir()

    plan = run_tiler("plan", url, "--model", "bicubic", "--json", cwd=workdir)
    assert plan.returncode == 0, plan.stderr
    assert sum(served) < size / 4  # the header, not the px
    assert f'"input": "{url}"' in plan.stdout  # the plan records the path as given

    served.clear()
    remote = run_tiler("upscale", url, "--model", "bicubic", "--region", 128, cwd=workdir)
    assert remote.returncode == 0, remote.stderr
    print(f"{len(served)} range requests, {sum(served)} bytes of a {size} byte file")
    assert len(served) > 4 and max(served) < size / 2  # windows, never the whole file
    assert sum(served) < 1.5 * size
    local = run_tiler("upscale", cog, tmp_path / "local.tif", "--model", "bicubic")
    assert local.returncode == 0, local.stderr
    np.testing.assert_array_equal(  # the default output: the URL's stem in the current folder
        read_raster(workdir / "scene_x4.tif")[0], read_raster(tmp_path / "local.tif")[0]
    )


def test_an_unreachable_url_is_a_one_line_error(tmp_path, server):
    base, _, _ = server
    missing = f"{base}/missing.tif"
    assert_one_error(
        run_tiler("upscale", missing, tmp_path / "out.tif"), 1, missing, "cannot be opened"
    )
    assert not (tmp_path / "out.tif").exists()
    assert os.listdir(tmp_path) == ["served"]
