#!/usr/bin/env python
"""CPU benchmark: `tiler upscale --model bicubic` vs `gdal_translate -outsize 400% -r cubic`.

For each SIZE it makes (once, cached) a synthetic SIZE x SIZE 3-band uint8 GeoTIFF,
upscales it 4x with both tools in a subprocess, and reports wall time, output
megapixels per second, CPU time, peak RSS and output file size.

Usage (from the repository root, with the project's venv active):

    python benchmarks/upscale_cpu.py                       # sizes 10000 20000
    python benchmarks/upscale_cpu.py --sizes 1000 2000     # quick check
    python benchmarks/upscale_cpu.py --gdal-threads --tiler-args="--workers 2"

(Write --tiler-args=... / --gdal-args=... with "=": argparse would otherwise take a
value such as "--overwrite" for an option of this script.)

Needs numpy and rasterio (input generation) and Debian's gdal-bin for
gdal_translate:  apt-get install -y gdal-bin

Peak RSS comes from os.wait4() on the child: Linux reports the largest
resident set of the child and of any descendants it waited for (a max over
processes, not a sum; both tools run as a single multi-threaded process).
"""

import argparse
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time

SCALE = 4
GEN_VERSION = "v1"  # bump when the generator changes, so cached inputs are rebuilt
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GDAL_HINT = (
    "gdal_translate not found. Install Debian's GDAL tools with:\n"
    "    apt-get install -y gdal-bin\n"
    "or pass --no-gdal to benchmark tiler alone."
)


# --------------------------------------------------------------------------- input generation


def _hash32(a, b, seed):
    """Deterministic 32-bit pseudo-random integer per integer pair (vectorised, wrapping uint32)."""
    import numpy as np

    with np.errstate(over="ignore"):
        h = a.astype(np.uint32) * np.uint32(0x9E3779B1) + b.astype(np.uint32) * np.uint32(
            0x85EBCA77
        )
        h += np.uint32(seed * 0xC2B2AE3D & 0xFFFFFFFF)
        h ^= h >> np.uint32(15)
        h *= np.uint32(0x2C1B3C6D)
        h ^= h >> np.uint32(12)
        h *= np.uint32(0x297A2D39)
        h ^= h >> np.uint32(15)
    return h


def synthetic_block(row0, col0, height, width, seed=0):
    """Imagery-like (3, height, width) uint8 block: large-scale sinusoidal 'terrain'
    (wavelengths 40..6000 px), warped field parcels (~100-200 px) with sharp edges and
    their own tint, and pixel noise. The structure is a function of absolute pixel
    coordinates, so windows join seamlessly; the noise is seeded by the window origin,
    so a file is reproducible for a given seed and window layout."""
    import numpy as np

    f32 = np.float32
    y = np.arange(row0, row0 + height, dtype=np.float64)[:, None]
    x = np.arange(col0, col0 + width, dtype=np.float64)[None, :]
    # Parcels: a grid of ~170 x 130 px cells whose boundaries wander by up to 60 px.
    pi = np.floor((y + 60.0 * np.sin(x / 530.0)) / 130.0).astype(np.int64) + 1_000_000
    pj = np.floor((x + 60.0 * np.sin(y / 610.0)) / 170.0).astype(np.int64) + 1_000_000
    h = _hash32(pi, pj, seed + 7)
    del pi, pj
    parcel = (h & np.uint32(0xFF)).astype(f32) / f32(255.0) - f32(0.5)
    waves = np.random.default_rng([seed, 12345])  # same waves for every window
    noise = np.random.default_rng([seed, row0, col0])
    out = np.empty((3, height, width), np.uint8)
    for band in range(3):
        tint = ((h >> np.uint32(8 * (band + 1))) & np.uint32(0xFF)).astype(f32) / f32(255.0) - f32(
            0.5
        )
        value = f32(45.0) * parcel + f32(14.0) * tint
        del tint
        for wavelength in (6000.0, 2500.0, 900.0, 300.0, 110.0, 40.0):
            theta, phase = waves.uniform(0, np.pi), waves.uniform(0, 2 * np.pi)
            ax = 2 * np.pi * np.cos(theta) / wavelength * x + phase  # (1, w)
            by = 2 * np.pi * np.sin(theta) / wavelength * y  # (h, 1)
            amp = 30.0 * (wavelength / 6000.0) ** 0.4
            # sin(ax + by) = sin(ax) cos(by) + cos(ax) sin(by): separable, no full-size sin().
            value += (amp * np.cos(by)).astype(f32) * np.sin(ax).astype(f32)
            value += (amp * np.sin(by)).astype(f32) * np.cos(ax).astype(f32)
        value += noise.standard_normal((height, width), dtype=f32) * f32(5.0)
        value += f32(100.0 + 22.0 * band)
        np.clip(value, 0, 255, out=value)
        out[band] = value
    return out


def ensure_input(size, cache_dir, seed=0):
    """Return the path of the cached SIZE x SIZE input, generating it window by window."""
    import rasterio
    from rasterio.crs import CRS
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    path = os.path.join(cache_dir, "synthetic_%s_%d.tif" % (GEN_VERSION, size))
    if os.path.exists(path):
        return path, False
    os.makedirs(cache_dir, exist_ok=True)
    tmp = path + ".partial"
    profile = dict(
        driver="GTiff",
        width=size,
        height=size,
        count=3,
        dtype="uint8",
        crs=CRS.from_epsg(32633),
        transform=from_origin(400000.0, 5500000.0, 10.0, 10.0),
        tiled=True,
        blockxsize=512,
        blockysize=512,
        compress="DEFLATE",
        interleave="pixel",
        photometric="RGB",
        bigtiff="IF_SAFER",
        num_threads="ALL_CPUS",
    )
    t0 = time.perf_counter()
    strip = 512  # one row of 512x512 tiles at a time: ~size*512*3 bytes in memory
    with rasterio.Env(GDAL_CACHEMAX=256), rasterio.open(tmp, "w", **profile) as dst:
        for row0 in range(0, size, strip):
            h = min(strip, size - row0)
            block = synthetic_block(row0, 0, h, size, seed)
            dst.write(block, window=Window(0, row0, size, h))
            done = (row0 + h) / size
            print(
                "\r  generating %s: %3.0f%%" % (os.path.basename(path), 100 * done),
                end="",
                file=sys.stderr,
                flush=True,
            )
        dst.update_tags(
            SOURCE="tiler benchmarks/upscale_cpu.py synthetic %s seed=%d" % (GEN_VERSION, seed)
        )
    print(" (%.1f s)" % (time.perf_counter() - t0), file=sys.stderr)
    os.replace(tmp, path)
    return path, True


# --------------------------------------------------------------------------- measurement


def measure(cmd, env=None):
    """Run cmd; return (returncode, wall_s, cpu_s, peak_rss_bytes, stderr_tail)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    # Read stderr in the background so a chatty child cannot block on a full pipe.
    import threading

    chunks = []
    reader = threading.Thread(target=lambda: chunks.append(proc.stderr.read()), daemon=True)
    reader.start()
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    reader.join()
    proc.stderr.close()
    proc.returncode = os.waitstatus_to_exitcode(status)  # tell Popen the child is reaped
    err = b"".join(c for c in chunks if c).decode(errors="replace")
    # Linux ru_maxrss is in KiB.
    return proc.returncode, wall, ru.ru_utime + ru.ru_stime, ru.ru_maxrss * 1024, err[-2000:]


def path_size(path):
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)
    return os.path.getsize(path) if os.path.exists(path) else 0


def remove(path):
    if os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.exists(path):
        os.remove(path)
    for extra in (path + ".aux.xml", path + ".tiler"):
        if os.path.isdir(extra):
            shutil.rmtree(extra, ignore_errors=True)
        elif os.path.exists(extra):
            os.remove(extra)


def output_shape(path):
    try:
        import rasterio

        with rasterio.open(path) as ds:
            return ds.width, ds.height, ds.count
    except Exception:
        return None


def fmt_bytes(n):
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return "%.1f %s" % (n, unit) if unit != "B" else "%d B" % n
        n /= 1024.0


# --------------------------------------------------------------------------- environment info


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def command_version(cmd):
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return "unavailable"


def loadavg():
    """1-minute load average (other work on the machine skews the timings)."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def mem_total():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def find_tiler(explicit):
    if explicit:
        return shlex.split(explicit)
    exe = shutil.which("tiler")
    if exe:
        return [exe]
    sibling = os.path.join(os.path.dirname(sys.executable), "tiler")
    if os.path.exists(sibling):
        return [sibling]
    return [sys.executable, "-m", "tiler"]


def tiler_plan_workdir(tiler, src, out, extra):
    """workdir_bytes_max from `tiler plan --json` (None if unavailable)."""
    import json

    for args in (extra, []):
        try:
            res = subprocess.run(
                tiler + ["plan", src, out, "--model", "bicubic", "--json", "-q"] + args,
                capture_output=True,
                text=True,
                timeout=120,
            )
            if res.returncode == 0:
                return json.loads(res.stdout).get("workdir_bytes_max")
        except (OSError, ValueError, subprocess.SubprocessError):
            pass
    return None


# --------------------------------------------------------------------------- main


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=[10000, 20000],
        metavar="SIZE",
        help="input edge lengths in pixels (default: 10000 20000)",
    )
    ap.add_argument(
        "--cache-dir",
        default=os.path.join(REPO_ROOT, ".bench"),
        help="where generated inputs are cached (default: <repo>/.bench)",
    )
    ap.add_argument(
        "--out-dir", default=None, help="where outputs are written (default: the cache dir)"
    )
    ap.add_argument(
        "--tiler-args",
        default="",
        help='extra options for tiler upscale, e.g. --tiler-args="--workers 2 --region 1024"',
    )
    ap.add_argument(
        "--gdal-args",
        default="",
        help='extra options for every gdal_translate run, e.g. --gdal-args="-co PREDICTOR=2"',
    )
    ap.add_argument(
        "--tiler-cmd",
        default=None,
        help="tiler executable (default: `tiler` on PATH, next to this python, or python -m tiler)",
    )
    ap.add_argument(
        "--gdal-threads",
        action="store_true",
        help="also run gdal_translate with --config GDAL_NUM_THREADS ALL_CPUS "
        "-co NUM_THREADS=ALL_CPUS",
    )
    ap.add_argument("--no-gdal", action="store_true", help="benchmark tiler only")
    ap.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="runs per tool and size (interleaved); the table shows the median "
        "wall time and the max peak RSS (default: 1)",
    )
    ap.add_argument("--keep", action="store_true", help="keep output files")
    ap.add_argument("--seed", type=int, default=0, help="seed of the synthetic input")
    args = ap.parse_args(argv)
    if args.repeat < 1:
        ap.error("--repeat must be >= 1")

    out_dir = args.out_dir or args.cache_dir
    os.makedirs(out_dir, exist_ok=True)
    tiler = find_tiler(args.tiler_cmd)
    tiler_extra = shlex.split(args.tiler_args)
    gdal_extra = shlex.split(args.gdal_args)
    gdal = shutil.which("gdal_translate")
    if not args.no_gdal and gdal is None:
        sys.exit(GDAL_HINT)

    print(
        "machine : %s, %s CPUs (nproc), %s RAM, %s"
        % (cpu_model(), command_version(["nproc"]), fmt_bytes(mem_total()), platform.platform())
    )
    print("load    : %.2f (1-min average; other work on the machine skews the timings)" % loadavg())
    print("python  : %s" % sys.version.split()[0])
    print("tiler   : %s  [%s]" % (command_version(tiler + ["--version"]), " ".join(tiler)))
    try:
        import rasterio

        print("rasterio: %s (bundled GDAL %s)" % (rasterio.__version__, rasterio.__gdal_version__))
    except ImportError:
        print("rasterio: not importable here (needed for input generation)")
    if gdal:
        print("gdal    : %s  [%s]" % (command_version([gdal, "--version"]), gdal))
    print("tiler args : %s" % (" ".join(tiler_extra) or "(none)"))
    print("gdal args  : %s" % (" ".join(gdal_extra) or "(none)"))
    print("cache dir  : %s   out dir: %s" % (args.cache_dir, out_dir))
    print()

    results = []  # (size, tool, rc, wall, cpu, rss, out_bytes, note, load)
    for size in args.sizes:
        src, made = ensure_input(size, args.cache_dir, args.seed)
        out_px = (SCALE * size) ** 2
        print(
            "size %d: input %s (%s%s), output %d x %d = %.0f MP"
            % (
                size,
                src,
                fmt_bytes(path_size(src)),
                ", generated" if made else ", cached",
                SCALE * size,
                SCALE * size,
                out_px / 1e6,
            ),
            flush=True,
        )

        runs = []
        out_t = os.path.join(out_dir, "out_%d_tiler.tif" % size)
        runs.append(
            (
                "tiler",
                out_t,
                tiler
                + ["upscale", src, out_t, "--model", "bicubic", "--overwrite", "-q"]
                + tiler_extra,
                None,
            )
        )
        if not args.no_gdal:
            base = [
                "-outsize",
                "%d%%" % (SCALE * 100),
                "%d%%" % (SCALE * 100),
                "-r",
                "cubic",
                "-co",
                "TILED=YES",
                "-co",
                "COMPRESS=DEFLATE",
                "-co",
                "BIGTIFF=IF_SAFER",
            ] + gdal_extra
            out_g = os.path.join(out_dir, "out_%d_gdal.tif" % size)
            runs.append(("gdal", out_g, [gdal, "-q"] + base + [src, out_g], None))
            if args.gdal_threads:
                out_gt = os.path.join(out_dir, "out_%d_gdal_threads.tif" % size)
                runs.append(
                    (
                        "gdal-threads",
                        out_gt,
                        [gdal, "-q", "--config", "GDAL_NUM_THREADS", "ALL_CPUS"]
                        + base
                        + ["-co", "NUM_THREADS=ALL_CPUS", src, out_gt],
                        None,
                    )
                )

        wd = tiler_plan_workdir(tiler, src, out_t, tiler_extra)
        free = shutil.disk_usage(out_dir).free
        print(
            "  free disk in out dir: %s; tiler workdir upper bound: %s"
            % (fmt_bytes(free), fmt_bytes(wd) if wd else "unknown")
        )
        if wd and wd > free:
            print("  WARNING: tiler's workdir may not fit on this disk", file=sys.stderr)

        per_tool = {tool: [] for tool, _, _, _ in runs}
        for rep in range(args.repeat):
            for tool, out, cmd, env in runs:
                if per_tool[tool] and per_tool[tool][-1][0] != 0:
                    continue  # failed before; don't retry
                remove(out)
                load = loadavg()
                print(
                    "  running %-12s%s (load %.2f): %s"
                    % (
                        tool,
                        " #%d" % (rep + 1) if args.repeat > 1 else "",
                        load,
                        " ".join(shlex.quote(c) for c in cmd),
                    ),
                    flush=True,
                )
                rc, wall, cpu, rss, err = measure(cmd, env)
                nbytes = path_size(out)
                note = ""
                if rc != 0:
                    note = "FAILED rc=%d" % rc
                    print(
                        "    %s\n    %s" % (note, err.strip().replace("\n", "\n    ")),
                        file=sys.stderr,
                    )
                else:
                    shape = output_shape(out)
                    expect = (SCALE * size, SCALE * size, 3)
                    if shape is not None and shape != expect:
                        note = "output %s != expected %s" % (shape, expect)
                per_tool[tool].append((rc, wall, cpu, rss, nbytes, note, load))
                print(
                    "    -> %.1f s wall, %.1f s CPU, peak RSS %.0f MiB, %s %s"
                    % (wall, cpu, rss / 2**20, fmt_bytes(nbytes), note),
                    flush=True,
                )
                if not args.keep or rep < args.repeat - 1:
                    remove(out)
        for tool, out, cmd, env in runs:
            tries = per_tool[tool]
            if tries[-1][0] != 0:
                chosen = tries[-1]
            else:  # the run with the median wall time; peak RSS = max over runs
                chosen = sorted(tries, key=lambda t: t[1])[(len(tries) - 1) // 2]
                chosen = chosen[:3] + (max(t[3] for t in tries),) + chosen[4:]
            rc, wall, cpu, rss, nbytes, note, load = chosen
            results.append((size, tool, rc, wall, cpu, rss, nbytes, note, load))
        print()

    # ------------------------------------------------------------------ table
    header = (
        "size",
        "tool",
        "wall s",
        "CPU s",
        "out MP/s",
        "peak RSS MiB",
        "output",
        "load",
        "note",
    )
    rows = []
    for size, tool, rc, wall, cpu, rss, nbytes, note, load in results:
        mps = (SCALE * size) ** 2 / 1e6 / wall if rc == 0 else float("nan")
        rows.append(
            (
                "%d" % size,
                tool,
                "%.1f" % wall,
                "%.1f" % cpu,
                "%.1f" % mps,
                "%.0f" % (rss / 2**20),
                fmt_bytes(nbytes),
                "%.2f" % load,
                note,
            )
        )
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    line = "  ".join("%%%ds" % w if i not in (1, 8) else "%%-%ds" % w for i, w in enumerate(widths))
    print(line % header)
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print(line % r)
    print()

    # ------------------------------------------------------------------ summary
    ok = {(s, t): (wall, rss) for s, t, rc, wall, cpu, rss, nb, n, ld in results if rc == 0}
    parts = []
    for size in args.sizes:
        if (size, "tiler") not in ok:
            continue
        tw = ok[(size, "tiler")][0]
        for ref in ("gdal", "gdal-threads"):
            if (size, ref) in ok:
                parts.append("%d: %.2fx %s" % (size, ok[(size, ref)][0] / tw, ref))
    if parts:
        print("tiler MP/s relative to GDAL (>1 = tiler faster): " + ", ".join(parts))
    rss = [(s, ok[(s, "tiler")][1]) for s in args.sizes if (s, "tiler") in ok]
    if len(rss) >= 2:
        lo, hi = min(r for _, r in rss), max(r for _, r in rss)
        px_ratio = (max(s for s, _ in rss) / min(s for s, _ in rss)) ** 2
        verdict = (
            "flat"
            if hi / lo <= 1.25
            else "grows (%.2fx across sizes whose pixel counts differ %.0fx)" % (hi / lo, px_ratio)
        )
        print(
            "tiler peak RSS across sizes: %s -> %s"
            % (", ".join("%d: %.0f MiB" % (s, r / 2**20) for s, r in rss), verdict)
        )
    elif rss:
        print("tiler peak RSS: %.0f MiB (one size only)" % (rss[0][1] / 2**20))
    return 0 if all(r[2] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
