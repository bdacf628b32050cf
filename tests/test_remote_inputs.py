"""Inputs at any path GDAL opens (tiler/raster/sources.py): a COG served over HTTP by a real server
on 127.0.0.1 that answers range requests, read window by window through GDAL's /vsicurl/, gives the
output of the local file; so does an ``s3://`` URL on moto's S3-compatible server, with the
credentials and endpoint in the environment; unreachable ones are one-line errors."""

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


@pytest.fixture
def s3_server():
    """moto's S3-compatible server on 127.0.0.1 (skipped where moto is not installed), and the
    environment GDAL reads to reach it: endpoint, path-style addressing, plain HTTP, keys."""
    server_module = pytest.importorskip("moto.server")
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "AWS_S3_ENDPOINT": f"{host}:{port}",
        "AWS_HTTPS": "NO",
        "AWS_VIRTUAL_HOSTING": "FALSE",
    }
    yield f"http://{host}:{port}", env
    server.stop()


def test_an_s3_url_reads_like_the_local_file(tmp_path, s3_server):
    import boto3

    endpoint, env = s3_server
    cog = make_cog(tmp_path / "scene.tif", size=256)
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    client.create_bucket(Bucket="imagery")
    client.upload_file(str(cog), "imagery", "tiles/scene.tif")
    out = tmp_path / "s3.tif"
    result = run_tiler(
        "upscale", "s3://imagery/tiles/scene.tif", out, "--model", "bicubic", env=env
    )
    assert result.returncode == 0, result.stderr
    assert "testing" not in result.stderr  # credentials are never shown
    local = run_tiler("upscale", cog, tmp_path / "local.tif", "--model", "bicubic")
    assert local.returncode == 0, local.stderr
    np.testing.assert_array_equal(read_raster(out)[0], read_raster(tmp_path / "local.tif")[0])
    missing = run_tiler("upscale", "s3://imagery/none.tif", tmp_path / "none.tif", env=env)
    assert_one_error(missing, 1, "s3://imagery/none.tif", "cannot be opened")


def test_a_workflow_takes_urls_as_inputs(tmp_path, server):
    import yaml

    base, folder, _ = server
    cog = make_cog(folder / "scene.tif", size=128)
    workflow = {
        "inputs": [f"{base}/scene.tif"],
        "steps": [
            {"name": "x2", "task": "upscale", "model": "bicubic", "scale": 2,
             "output": "out/{stem}_x2.tif"},
        ],
    }  # fmt: skip
    path = tmp_path / "workflow.yaml"
    path.write_text(yaml.safe_dump(workflow))
    result = run_tiler("run", path)
    assert result.returncode == 0, result.stderr
    local = run_tiler("upscale", cog, tmp_path / "local.tif", "--model", "bicubic", "--scale", 2)
    assert local.returncode == 0, local.stderr
    np.testing.assert_array_equal(
        read_raster(tmp_path / "out" / "scene_x2.tif")[0], read_raster(tmp_path / "local.tif")[0]
    )
    again = run_tiler("run", path)  # up to date: the plan records the URL as given
    assert again.returncode == 0 and "up to date" in again.stderr, again.stderr
