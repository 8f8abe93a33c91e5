"""vmsnap analyze sharing: exact counts on dumps built page by page, engines agree, .vms input, errors."""

import csv
import io
import json
import os

import numpy as np
import pytest
from blake3 import blake3
from click.testing import CliRunner
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from vmsnap import pages as P
from vmsnap.analyze import sharing as S
from vmsnap.analyze.sharing import analyze
from vmsnap.sources.base import page_batches
from vmsnap.cli import main
from vmsnap.errors import InputError, IntegrityError, UsageError
from vmsnap.format.writer import SnapshotWriter
from vmsnap.sources.base import zero_chunks

from conftest import build_image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEADBEEF = b"\xde\xad\xbe\xef"


def run(*args):
    return CliRunner().invoke(main, list(args))


def strip(result):
    """The result without the fields that name the file (path, format)."""
    result = json.loads(json.dumps(result))
    for d in result["dumps"]:
        d.pop("path")
        d.pop("format")
    return result


# -- an independent oracle: plain Python over page bytes ----------------------------------------


def oracle(dumps, page_size=4096, top=10):
    """Every number of the report, computed page by page from the page bytes of each dump's regions."""
    per_dump = []  # (pages list, kinds list, periods list)
    for regions in dumps:
        pages, kinds, periods = [], [], []
        for data in regions:
            n = -(-len(data) // page_size)
            padded = data + bytes(n * page_size - len(data))
            if n == 0:
                continue
            k, p = P.classify(np.frombuffer(padded, dtype=np.uint8).reshape(n, page_size))
            pages += [padded[i * page_size:(i + 1) * page_size] for i in range(n)]
            kinds += k.tolist()
            periods += p.tolist()
        per_dump.append((pages, kinds, periods))

    out_dumps = []
    fleet_counts = {}  # content -> {dump: pages}
    klass = {}
    for i, (pages, kinds, periods) in enumerate(per_dump):
        counts = {}
        pkinds = {k: 0 for k in S.PATTERN_KINDS}
        for page, k, per in zip(pages, kinds, periods):
            counts[page] = counts.get(page, 0) + 1
            klass[page] = k
            if k == P.PATTERN:
                pkinds[P.pattern_kind_name(per)] += 1
            fleet_counts.setdefault(page, {}).setdefault(i, 0)
            fleet_counts[page][i] += 1
        by = {}
        for cls, name in ((P.PATTERN, "pattern"), (P.SPARSE, "sparse"), (P.OTHER, "other")):
            cs = [c for page, c in counts.items() if klass[page] == cls]
            by[name] = {"pages": sum(cs), "contents": len(cs), "pages_shared": sum(1 for c in cs if c >= 2),
                        "pages_sharing": sum(c - 1 for c in cs)}
        zero = kinds.count(P.ZERO)
        shared = sum(b["pages_shared"] for b in by.values())
        sharing = sum(b["pages_sharing"] for b in by.values())
        saved = (zero + sharing) * page_size
        out_dumps.append({
            "index": i, "bytes": sum(len(r) for r in dumps[i]), "pages": len(pages), "zero_pages": zero,
            "pattern_pages": by["pattern"]["pages"], "pattern_kinds": pkinds,
            "sparse_pages": by["sparse"]["pages"], "other_pages": by["other"]["pages"],
            "distinct_contents": len(counts), "pages_shared": shared, "pages_sharing": sharing,
            "pages_unshared": len(pages) - zero - shared - sharing, "by_class": by,
            "bytes_saved": saved, "percent_saved": pct(saved, len(pages) * page_size)})

    total = sum(d["pages"] for d in out_dumps)
    zero = sum(d["zero_pages"] for d in out_dumps)
    nonzero = {c: w for c, w in fleet_counts.items() if klass[c] != P.ZERO}
    cross = {c: w for c, w in nonzero.items() if klass[c] != P.PATTERN}
    pat = {c: w for c, w in nonzero.items() if klass[c] == P.PATTERN}

    def totals(shared, sharing):
        saved = (zero + sharing) * page_size
        return {"zero_pages": zero, "pages_shared": shared, "pages_sharing": sharing,
                "pages_unshared": total - zero - shared - sharing, "bytes_saved": saved,
                "percent_saved": pct(saved, total * page_size)}

    cross_shared = sum(1 for w in cross.values() if sum(w.values()) >= 2)
    cross_sharing = sum(sum(w.values()) - 1 for w in cross.values())
    policy = totals(sum(1 for w in pat.values() for c in w.values() if c >= 2) + cross_shared,
                    sum(c - 1 for w in pat.values() for c in w.values()) + cross_sharing)
    every = totals(sum(1 for w in nonzero.values() if sum(w.values()) >= 2),
                   sum(sum(w.values()) - 1 for w in nonzero.values()))
    within = sum(d["pages_sharing"] for d in out_dumps)
    multi = {c: w for c, w in cross.items() if len(w) >= 2}
    n = len(dumps)
    matrix = [[sum(1 for w in cross.values() if i in w and j in w) for j in range(n)] for i in range(n)]
    tops = []
    for c, w in nonzero.items():
        if sum(w.values()) >= 2:
            is_pat = klass[c] == P.PATTERN
            per = next(per_dump[d][2][per_dump[d][0].index(c)] for d in w)
            tops.append({"digest": blake3(c).digest(length=16).hex(), "pages": sum(w.values()),
                         "class": S.CLASS_NAMES.get(klass[c], "pattern"),
                         "pattern": P.pattern_kind_name(per) if is_pat else None, "shared_across_vms": not is_pat,
                         "dumps": [{"dump": d, "pages": k} for d, k in sorted(w.items())]})
    tops.sort(key=lambda t: (-t["pages"], t["digest"]))
    return {
        "page_size": page_size,
        "sharing_policy": "zero and pattern pages are shared within their own VM only; sparse and other pages "
                          "across all VMs",
        "dumps": out_dumps,
        "fleet": {
            "dumps": n, "pages": total, "bytes": sum(d["bytes"] for d in out_dumps), "zero_pages": zero,
            "pattern_pages": sum(d["pattern_pages"] for d in out_dumps),
            "sparse_pages": sum(d["sparse_pages"] for d in out_dumps),
            "other_pages": sum(d["other_pages"] for d in out_dumps),
            "distinct_contents": len(fleet_counts), "policy": policy, "everywhere": every,
            "difference": {"pages": every["pages_sharing"] - policy["pages_sharing"],
                           "bytes": every["bytes_saved"] - policy["bytes_saved"]},
            "within_vms": {"pages_sharing": within, "bytes_saved": (zero + within) * page_size},
            "cross_vm": {"contents": len(multi), "pages": sum(sum(w.values()) for w in multi.values()),
                         "pages_saved": sum(len(w) - 1 for w in multi.values()),
                         "bytes_saved": sum(len(w) - 1 for w in multi.values()) * page_size},
        },
        "matrix": matrix,
        "top": tops[:top],
    }


def pct(part, whole):
    return round(100.0 * part / whole, 3) if whole else 0.0


# -- exact counts ------------------------------------------------------------------------------------


A_SPEC = [("random", 1), ("zero",), ("fill", 5), ("copy", 0), ("fill", 5), ("unit", DEADBEEF),
          ("sparse", {3: 7}), ("random", 2)]
B_SPEC = [("random", 1), ("random", 3), ("fill", 5), ("sparse", {3: 7}), ("zero",), ("random", 3)]


@pytest.fixture
def two_dumps(write_file):
    a = build_image(A_SPEC, tail=b"abc")  # the tail is a sparse page of its own once zero-padded
    b = build_image(B_SPEC)
    return write_file("a.raw", a), write_file("b.raw", b), a, b


def test_every_number_of_a_two_dump_fleet(two_dumps):
    """Numbers worked out by hand from the page lists above."""
    pa, pb, _, _ = two_dumps
    r = analyze([pa, pb], top=10)
    a, b = r["dumps"]
    assert (a["pages"], a["bytes"], a["zero_pages"], a["pattern_pages"], a["sparse_pages"], a["other_pages"]) == \
        (9, 8 * 4096 + 3, 1, 3, 2, 3)
    assert a["pattern_kinds"] == {"byte": 2, "word16": 0, "word32": 1, "word64": 0, "periodic": 0}
    # contents: zero, fill 5, deadbeef, sparse{3:7}, tail, random 1, random 2
    assert a["distinct_contents"] == 7
    # fill 5 twice (pattern, within the VM) and random 1 twice (other)
    assert (a["pages_shared"], a["pages_sharing"], a["pages_unshared"]) == (2, 2, 4)
    assert a["by_class"] == {"pattern": {"pages": 3, "contents": 2, "pages_shared": 1, "pages_sharing": 1},
                             "sparse": {"pages": 2, "contents": 2, "pages_shared": 0, "pages_sharing": 0},
                             "other": {"pages": 3, "contents": 2, "pages_shared": 1, "pages_sharing": 1}}
    assert (a["bytes_saved"], a["percent_saved"]) == (3 * 4096, 33.333)
    assert (b["pages"], b["zero_pages"], b["pattern_pages"], b["sparse_pages"], b["other_pages"]) == (6, 1, 1, 1, 3)
    assert (b["distinct_contents"], b["pages_shared"], b["pages_sharing"], b["pages_unshared"]) == (5, 1, 1, 3)
    f = r["fleet"]
    assert (f["dumps"], f["pages"], f["zero_pages"], f["pattern_pages"], f["sparse_pages"], f["other_pages"]) == \
        (2, 15, 2, 4, 3, 6)
    assert f["distinct_contents"] == 8  # zero, fill 5, deadbeef, sparse, tail, random 1, 2, 3
    # policy: fill 5 shared within a (1 saved); random 1 (3 pages), random 3 (2), sparse (2) across VMs (4 saved)
    assert f["policy"] == {"zero_pages": 2, "pages_shared": 4, "pages_sharing": 5, "pages_unshared": 4,
                           "bytes_saved": 7 * 4096, "percent_saved": 46.667}
    # everywhere: fill 5 is one copy for both VMs, one more page saved
    assert f["everywhere"] == {"zero_pages": 2, "pages_shared": 4, "pages_sharing": 6, "pages_unshared": 3,
                               "bytes_saved": 8 * 4096, "percent_saved": 53.333}
    assert f["difference"] == {"pages": 1, "bytes": 4096}
    assert f["within_vms"] == {"pages_sharing": 3, "bytes_saved": 5 * 4096}
    # random 1 and the sparse page are in both dumps: one page each saved by crossing VMs
    assert f["cross_vm"] == {"contents": 2, "pages": 5, "pages_saved": 2, "bytes_saved": 2 * 4096}
    assert r["matrix"] == [[4, 2], [2, 3]]
    fill5 = blake3(bytes([5]) * 4096).digest(length=16).hex()
    rand1 = blake3(build_image([("random", 1)])).digest(length=16).hex()
    assert [(t["pages"], t["class"], t["pattern"]) for t in r["top"]] == \
        [(3, "pattern", "byte"), (3, "other", None), (2, "other", None), (2, "sparse", None)]
    assert {r["top"][0]["digest"], r["top"][1]["digest"]} == {fill5, rand1}
    assert r["top"][0]["digest"] < r["top"][1]["digest"]  # ties: by digest
    top_rand1 = next(t for t in r["top"] if t["digest"] == rand1)
    assert top_rand1["dumps"] == [{"dump": 0, "pages": 2}, {"dump": 1, "pages": 1}]
    assert top_rand1["shared_across_vms"] and not r["top"][[t["digest"] for t in r["top"]].index(fill5)][
        "shared_across_vms"]
    assert strip(r) == oracle([[build_image(A_SPEC, tail=b"abc")], [build_image(B_SPEC)]])


PAGE_SPECS = st.one_of(
    st.just(("zero",)), st.sampled_from([("fill", 5), ("fill", 0xFF), ("unit", DEADBEEF), ("unit", bytes(range(48)))]),
    st.sampled_from([("sparse", {3: 7}), ("sparse", {0: 1, 500: 2})]),
    st.tuples(st.just("random"), st.integers(0, 4)))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(specs=st.lists(st.lists(PAGE_SPECS, max_size=10), min_size=1, max_size=3),
       tails=st.lists(st.binary(max_size=20), min_size=3, max_size=3),
       partitions=st.sampled_from([1, 2, 16]), top=st.integers(0, 6))
def test_matches_a_page_by_page_oracle(tmp_path, specs, tails, partitions, top):
    images, paths = [], []
    for i, spec in enumerate(specs):
        data = build_image(spec, tail=tails[i])
        path = tmp_path / f"d{i}.raw"
        path.write_bytes(data)
        images.append([data])
        paths.append(str(path))
    # fmt="raw": a tail may well start with the .vms magic
    got = analyze(paths, fmt="raw", top=top, partitions=partitions, jobs=1, buffer_bytes=64)  # spills every batch
    assert strip(got) == oracle(images, top=top)


def test_known_fleet_of_four(write_file):
    """Four VMs from one 'golden image': every page of the image in all four, plus a private page each."""
    golden = [("random", 10 + i) for i in range(6)]
    paths = []
    for v in range(4):
        spec = golden + [("random", 100 + v), ("zero",), ("zero",), ("fill", v + 1), ("fill", v + 1)]
        paths.append(write_file(f"vm{v}.raw", build_image(spec)))
    r = analyze(paths, top=3)
    f = r["fleet"]
    assert f["pages"] == 44 and f["zero_pages"] == 8 and f["pattern_pages"] == 8
    # golden: 6 contents x 4 copies -> 18 pages saved across VMs; each VM saves one pattern page within itself
    assert f["cross_vm"] == {"contents": 6, "pages": 24, "pages_saved": 18, "bytes_saved": 18 * 4096}
    assert f["policy"]["pages_sharing"] == 18 + 4 and f["policy"]["pages_shared"] == 6 + 4
    assert f["everywhere"] == f["policy"]  # the fill bytes differ between VMs: nothing more to share
    assert r["matrix"] == [[7 if i == j else 6 for j in range(4)] for i in range(4)]
    assert all(t["pages"] == 4 and len(t["dumps"]) == 4 for t in r["top"])


# -- engines and inputs agree --------------------------------------------------------------------------


@pytest.fixture
def genimages(tmp_path):
    from genimage import image_bytes

    paths = []
    for seed in (1, 2):
        p = tmp_path / f"g{seed}.raw"
        p.write_bytes(image_bytes(6 << 20, seed) + b"tail")
        paths.append(str(p))
    return paths


def test_local_jobs_partitions_spilling_agree(genimages, tmp_path):
    base = analyze(genimages, jobs=1)
    assert base["fleet"]["cross_vm"]["contents"] > 0 and base["fleet"]["policy"]["pages_sharing"] > 0
    assert analyze(genimages, jobs=2) == base
    assert analyze(genimages, jobs=3, partitions=1) == base
    assert analyze(genimages, jobs=2, partitions=256, buffer_bytes=4096, temp_dir=str(tmp_path)) == base
    assert os.listdir(tmp_path) == ["g1.raw", "g2.raw"]  # spilled partitions are removed


def test_spilled_partitions_go_to_disk(genimages, tmp_path, monkeypatch):
    spilled = []
    real = S._Partitioner.spill

    def spy(self):
        spilled.append(sum(a.nbytes for parts in self.parts for a in parts))
        real(self)

    monkeypatch.setattr(S._Partitioner, "spill", spy)
    monkeypatch.setattr(S, "BATCH_BYTES", 64 << 10)  # 16 pages: at most 16 records of 17 bytes per batch
    base = analyze(genimages[:1], jobs=1)
    assert analyze(genimages[:1], buffer_bytes=256, temp_dir=str(tmp_path), jobs=1) == base
    assert len(spilled) > 5 and max(spilled) <= 256 + 16 * 17  # never more than a batch over the limit


def test_dask_local_cluster_gives_the_local_result(genimages):
    from distributed import LocalCluster

    base = analyze(genimages, jobs=1, partitions=4)
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, protocol="tcp",
                      dashboard_address=None) as cluster:
        assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
        got = analyze(genimages, scheduler=cluster.scheduler_address, partitions=4)
    assert got == base
    assert analyze(genimages, scheduler="local", jobs=2, partitions=4) == base


def test_vms_input_gives_the_numbers_of_its_raw_source(genimages, tmp_path):
    vms = str(tmp_path / "g1.vms")
    assert run("save", genimages[0], "-o", vms, "-q").exit_code == 0
    from_vms, from_raw = analyze([vms, genimages[1]]), analyze(genimages)
    assert from_vms["dumps"][0]["format"] == "vms"
    assert strip(from_vms) == strip(from_raw)


def test_one_dump_agrees_with_vmsnap_info(genimages, tmp_path):
    vms = str(tmp_path / "g.vms")
    # slices are storage, not KSM sharing: without them every distinct content is a data page
    assert run("save", genimages[0], "-o", vms, "-q", "--slice-window", "0").exit_code == 0
    info = json.loads(run("info", vms, "--json").output)
    d = analyze([genimages[0]])["dumps"][0]
    assert d["by_class"]["other"]["pages_shared"] == info["pages_shared"] > 0
    assert d["by_class"]["other"]["pages_sharing"] == info["pages_sharing"] > 0
    assert d["by_class"]["other"]["pages"] == info["pages"]["data"] + info["pages"]["ref"]
    assert d["by_class"]["other"]["contents"] == info["data_pages"]
    assert d["zero_pages"] == info["pages"]["zero"]
    assert d["sparse_pages"] == info["pages"]["sparse"] == info["sparse_pages"]
    assert d["pattern_pages"] == info["pages"]["pattern"]
    assert {k: v for k, v in d["pattern_kinds"].items() if v} == info["pattern_pages"]
    assert d["by_class"]["pattern"]["contents"] == info["patterns"]


def test_with_slices_info_leaves_out_exactly_the_repeated_slice_contents(tmp_path):
    # vmsnap-analyze-sharing(1): copies of a content first stored as a slice are slices too
    import numpy as np
    from genimage import image_bytes

    import vmsnap
    from vmsnap.format import structs as S

    raw, vms = str(tmp_path / "g.raw"), str(tmp_path / "g.vms")
    with open(raw, "wb") as fh:
        fh.write(image_bytes(24 << 20, 1))  # slices come from earlier 4 MiB batches: a few batches
    assert run("save", raw, "-o", vms, "-q").exit_code == 0
    info = json.loads(run("info", vms, "--json").output)
    other = analyze([raw])["dumps"][0]["by_class"]["other"]
    with vmsnap.open(vms) as snap:
        rec = snap.records[snap.records["kind"] == S.REC_SLICE]
        offsets = np.concatenate([a + snap.page_size * np.arange(c, dtype=np.uint64)
                                  for a, c in zip(rec["arg"].tolist(), rec["count"].tolist())])
    _, copies = np.unique(offsets, return_counts=True)
    repeated = copies[copies > 1]
    assert repeated.size > 0  # the fixture has some, or this test shows nothing
    assert other["pages_shared"] == info["pages_shared"] + repeated.size
    assert other["pages_sharing"] == info["pages_sharing"] + int((repeated - 1).sum())


def test_multi_region_vms_counts_each_region_with_its_own_tail(tmp_path):
    r1 = build_image([("random", 1), ("zero",), ("fill", 9)], tail=b"x")
    r2 = build_image([("random", 1), ("zero",), ("zero",)], tail=b"\0\0")
    path = tmp_path / "two.vms"
    with open(path, "wb") as out:
        w = SnapshotWriter(out, source="test")
        w.add_region("low", 0, [r1])
        w.add_region("high", 1 << 32, [r2[:5000], r2[5000:]])
        w.close()
    got = analyze([str(path)], top=5)
    assert got["dumps"][0]["pages"] == 4 + 4
    assert strip(got) == oracle([[r1, r2]], top=5)


# -- building blocks --------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(pieces=st.lists(st.one_of(st.binary(max_size=9000), st.integers(0, 20000)), max_size=8),
       batch=st.sampled_from([1024, 4096, 8192]))
@example(pieces=[4096, 3072, b"x" * 1024, 2048, 5 << 22], batch=4096)  # whole-page zero chunks in a row
def test_page_batches_cut_any_chunking_into_whole_pages(pieces, batch):
    ps = 1024
    chunks, want = [], b""
    for p in pieces:
        if isinstance(p, int):
            chunks += list(zero_chunks(p))
            want += bytes(p)
        else:
            chunks.append(p)
            want += p
    got = b""
    out = list(page_batches(iter(chunks), ps, batch))
    for i, b in enumerate(out):
        if isinstance(b, int):
            assert b > 0
            got += bytes(b * ps)
        else:
            assert 0 < len(b) <= batch
            assert len(b) % ps == 0 or i == len(out) - 1  # only the last batch ends in a partial page
            got += bytes(b)
    assert got == want
    assert all(not isinstance(b, int) for b in list(page_batches(iter([want]), ps, batch)))
    # consecutive zero chunks are one run: a 64 GiB hole was 16,384 batches, each a thread handoff
    assert not any(isinstance(a, int) and isinstance(b, int) for a, b in zip(out, out[1:]))


def test_zero_runs_of_a_vms_are_counted_without_reading(monkeypatch, tmp_path, genimages):
    vms = str(tmp_path / "z.vms")
    assert run("save", genimages[0], "-o", vms, "-q").exit_code == 0
    seen = []
    real = S.scan_batch
    monkeypatch.setattr(S, "scan_batch", lambda b, ps: seen.append(len(b)) or real(b, ps))
    d = analyze([vms], jobs=1)["dumps"][0]
    assert sum(seen) < d["bytes"] - (d["zero_pages"] // 2) * 4096  # most zero pages never reach the classifier


def test_partition_choice():
    assert S.choose_partitions(0, 4096) == 16
    assert S.choose_partitions(8 << 30, 4096) == 16
    assert S.choose_partitions(1 << 40, 4096) == 256  # 2**28 pages x 24 bytes / 32 MiB = 193
    for bad in (0, 3, 8192):
        with pytest.raises(UsageError):
            S.check_partitions(bad)


# -- command line ------------------------------------------------------------------------------------------


def test_cli_text_json_csv(two_dumps):
    pa, pb, _, _ = two_dumps
    text = run("analyze", "sharing", pa, pb, "-q")
    assert text.exit_code == 0
    assert "a.raw" in text.output and "pages_sharing 5" in text.output and "pattern/byte" in text.output
    js = json.loads(run("analyze", "sharing", pa, pb, "--json").output)
    assert js["fleet"]["policy"]["pages_sharing"] == 5 and js["matrix"] == [[4, 2], [2, 3]]
    rows = list(csv.DictReader(io.StringIO(run("analyze", "sharing", pa, pb, "--csv").output)))
    assert [r["row"] for r in rows] == ["0", "1", "fleet:policy", "fleet:everywhere"]
    assert rows[0]["path"] == pa and rows[0]["pattern_byte"] == "2" and rows[0]["pages_unshared"] == "4"
    assert rows[2]["pages_sharing"] == "5" and rows[3]["pages_sharing"] == "6"
    assert rows[3]["bytes_saved"] == str(8 * 4096)
    assert len(rows[0]) == len(S.PATTERN_KINDS) + 14


@pytest.mark.parametrize("args,code,message", [
    (["/nonexistent.raw"], InputError.exit_code, "no such file"),
    (["DIR"], InputError.exit_code, "is a directory"),
    (["A", "--json", "--csv"], UsageError.exit_code, "cannot be used together"),
    (["A", "--partitions", "3"], UsageError.exit_code, "power of two"),
    (["A", "--page-size", "3000"], UsageError.exit_code, "power of two"),
    (["A", "--scheduler", "http://x"], UsageError.exit_code, "--scheduler must be"),
    (["A", "--temp-dir", "/nonexistent"], UsageError.exit_code, "not a directory"),
    (["A", "--format", "nope"], UsageError.exit_code, "unknown input format"),
    (["BADVMS"], IntegrityError.exit_code, "failed its digest"),
    (["SHORTVMS"], IntegrityError.exit_code, "truncated"),
    ([], UsageError.exit_code, "Missing argument"),
])
def test_bad_inputs_are_one_line_errors(tmp_path, two_dumps, args, code, message):
    pa = two_dumps[0]
    vms = tmp_path / "s.vms"
    assert run("save", pa, "-o", str(vms), "-q").exit_code == 0
    blob = bytearray(vms.read_bytes())
    blob[-40] ^= 1
    (tmp_path / "bad.vms").write_bytes(bytes(blob))
    (tmp_path / "short.vms").write_bytes(vms.read_bytes()[:-100])
    subst = {"A": pa, "DIR": str(tmp_path), "BADVMS": str(tmp_path / "bad.vms"),
             "SHORTVMS": str(tmp_path / "short.vms")}
    result = run("analyze", "sharing", *[subst.get(a, a) for a in args])
    assert result.exit_code == code, result.output
    assert message in result.output
    assert result.output.startswith("vmsnap: error: ") and result.output.count("\n") == 1, result.output


def test_stdin_dump(two_dumps):
    pa, pb, a, _ = two_dumps
    result = CliRunner().invoke(main, ["analyze", "sharing", "-", pb, "--json"], input=a)
    assert result.exit_code == 0, result.output
    assert strip(json.loads(result.output)) == strip(analyze([pa, pb]))


def test_stdin_cannot_be_read_by_dask_workers(two_dumps):
    result = run("analyze", "sharing", two_dumps[0], "-", "--scheduler", "local")
    assert result.exit_code == UsageError.exit_code and "stdin" in result.output


def test_cli_scheduler_local_prints_the_local_result(two_dumps):
    pa, pb, _, _ = two_dumps
    local = run("analyze", "sharing", pa, pb, "--json")
    dask = run("analyze", "sharing", pa, pb, "--json", "--scheduler", "local", "-j", "2")
    assert dask.exit_code == 0, dask.output
    assert json.loads(dask.output) == json.loads(local.output)


def test_unreachable_scheduler_is_a_one_line_error(two_dumps, monkeypatch):
    from vmsnap.analyze import sharing_dask

    monkeypatch.setattr(sharing_dask, "CONNECT_TIMEOUT", "0.5s")
    result = run("analyze", "sharing", two_dumps[0], "--scheduler", "tcp://127.0.0.1:1")
    assert result.exit_code == 1
    assert result.output.startswith("vmsnap: error: cannot reach the Dask scheduler at tcp://127.0.0.1:1")
    assert result.output.count("\n") == 1


def test_man_page_names_every_json_field_and_csv_column():
    # (every option: test_cli.py::test_every_command_has_help_and_a_man_page)
    with open(os.path.join(ROOT, "man", "vmsnap-analyze-sharing.1")) as fh:
        text = fh.read()
    for field in ["pages_shared", "pages_sharing", "pages_unshared", "cross_vm", "matrix", "everywhere",
                  "within_vms", "by_class", "distinct_contents", "shared_across_vms", *S.PATTERN_KINDS]:
        assert field.replace("_", "\\_") in text or field in text, field
    from vmsnap.analyze.sharing_report import CSV_COLUMNS

    for column in CSV_COLUMNS:
        assert column in text or column.replace("_", "\\_") in text, column


def test_jobs_reads_raw_files_in_ranges_on_worker_processes(genimages, tmp_path, monkeypatch):
    monkeypatch.setattr(S, "RANGE_BYTES", 1 << 20)  # several ranges per dump
    calls = []
    real = S._map_ranges
    monkeypatch.setattr(S, "_map_ranges", lambda pool, path, ranges, *a: calls.append((path, len(ranges))) or
                        real(pool, path, ranges, *a))
    vms = str(tmp_path / "g.vms")
    assert run("save", genimages[1], "-o", vms, "-q").exit_code == 0
    one = analyze(genimages + [vms], jobs=1)
    assert calls == []
    assert analyze(genimages + [vms], jobs=2) == one
    assert calls == [(genimages[0], 7), (genimages[1], 7)]  # 6 MiB + 4 bytes; the .vms is read as a stream


def test_a_raw_file_that_shrinks_is_truncated_not_shorter(genimages, monkeypatch):
    real = S._file_ranges
    monkeypatch.setattr(S, "_file_ranges", lambda *a: [(o, n + 4096) for o, n in real(*a)])
    with pytest.raises(InputError, match="truncated"):
        analyze(genimages[:1], jobs=2)


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_ctrl_c_exits_130_and_leaves_no_temporary_files(tmp_path, jobs):
    import signal
    import subprocess
    import sys
    import time

    dump = tmp_path / "big.raw"
    with open(dump, "wb") as fh:
        size = (2 if jobs == "1" else 4) << 30
        fh.truncate(size)  # zero pages: cheap to make, a few seconds to read
        if jobs == "2":  # workers skip holes of 1 MiB or more: a byte every 512 KiB leaves none
            for offset in range(0, size, 512 << 10):
                os.pwrite(fh.fileno(), b"\1", offset)
    spill = tmp_path / "spill"
    spill.mkdir()
    # One job reads the regions: through a pipe, since the holes of a sparse file are not read at all.
    # Several jobs read the file in ranges of their own.
    cat = subprocess.Popen(["cat", str(dump)], stdout=subprocess.PIPE) if jobs == "1" else None
    proc = subprocess.Popen([sys.executable, "-m", "vmsnap.cli", "analyze", "sharing", "-j", jobs, "--temp-dir",
                             str(spill), "-" if cat else str(dump)], stdin=cat.stdout if cat else None,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if cat:
        cat.stdout.close()  # the pipe now belongs to vmsnap alone
    deadline = time.time() + 20
    while not os.listdir(spill) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    if cat:
        cat.kill()
        cat.wait()
    assert proc.returncode == 130, err
    assert b"interrupted" in err and b"Traceback" not in err and out == b""
    assert os.listdir(spill) == []


def test_worker_processes_leave_ctrl_c_to_the_parent():
    # Ctrl-C reaches the whole process group. Workers that took it inside the pool's
    # queues left the parent waiting for them at exit, forever (3 runs in 40).
    import signal

    pool = S.process_pool(2)
    try:
        masks = [pool.submit(signal.pthread_sigmask, signal.SIG_BLOCK, []).result() for _ in range(4)]
    finally:
        pool.shutdown()
    assert all(signal.SIGINT in m for m in masks)
    assert signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, [])  # the parent takes it again


def test_a_worker_counts_holes_as_zero_pages_without_reading_them(tmp_path, monkeypatch):
    # With -j 2 or more a raw file is cut into 64 MiB ranges for worker processes, and each
    # read its whole range: a 1 TiB sparse file took minutes (-j 1: 0.6 s).
    import os

    from vmsnap.analyze import sharing as sh

    path = tmp_path / "sparse.raw"
    data = os.urandom(1 << 20)
    with open(path, "wb") as fh:
        fh.truncate(256 << 20)
        fh.seek(100 << 20)
        fh.write(data)
    read = []
    real_pread = os.pread

    def counted(fd, n, offset):
        got = real_pread(fd, n, offset)
        read.append(len(got))
        return got

    monkeypatch.setattr(os, "pread", counted)
    zero, _, _, other, raw = sh.scan_range(str(path), 64 << 20, 128 << 20, 4096)
    assert (zero, other, len(raw)) == ((128 << 20) // 4096 - 256, 256, 256)
    assert sum(read) == len(data)
