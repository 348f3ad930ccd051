"""cxrlib.data.physionet against a loopback PhysioNet emulator (tests/physionet_server.py)."""
from __future__ import annotations

import base64
import errno
import hashlib
import logging
import pickle
import sys
import types

import pandas as pd
import pytest
from physionet_server import FakePhysioNet, make_release

from cxrlib.__main__ import main
from cxrlib.data import physionet, transfer
from cxrlib.data import release as mimic_release
from cxrlib.data.checksums import read_checksums
from cxrlib.data.transfer import AuthError, DiskFullError, get_credentials, parse_retry_after, retry_delay
from cxrlib.errors import UserError

USER, PASSWORD = "alice", "S3cr3t-Pa55-xyz"
SECRETS = [PASSWORD.encode(), base64.b64encode(f"{USER}:{PASSWORD}".encode())]


@pytest.fixture
def release(tmp_path):
    images = make_release(tmp_path / "release", n_images=6)
    return tmp_path / "release", images


@pytest.fixture
def server(release):
    fake = FakePhysioNet(release[0], USER, PASSWORD).start()
    yield fake
    fake.stop()


@pytest.fixture
def captured(capsys):
    """capsys.readouterr() that also keeps the text for the leak check below."""
    seen = []

    def read():
        out = capsys.readouterr()
        seen.append(out.out + out.err)
        return out
    read.seen = seen
    return read


@pytest.fixture(autouse=True)
def no_secret_leaks(tmp_path, tmp_path_factory, monkeypatch, captured, caplog):
    """Credentials from the environment, and afterwards: the password is in no file, output or log."""
    monkeypatch.setenv("PHYSIONET_USERNAME", USER)
    monkeypatch.setenv("PHYSIONET_PASSWORD", PASSWORD)
    monkeypatch.setenv("NETRC", str(tmp_path_factory.mktemp("home") / "no-netrc"))
    caplog.set_level(logging.DEBUG)
    yield
    captured()
    for secret in SECRETS:
        assert secret.decode() not in "".join(captured.seen) + caplog.text
        for file in tmp_path.rglob("*"):
            if file.is_file():
                assert secret not in file.read_bytes(), file


def cohort_csv(tmp_path, paths):
    path = tmp_path / "cohort.csv"
    pd.DataFrame({"path": paths, "split": "train"}).to_csv(path, index=False)
    return path


def get(server, root, paths, **kwargs):
    return physionet.fetch(root, paths, base_url=server.base_url, workers=3, progress=False, backoff=0.01, **kwargs)


def same(release, root, rel):
    return (root / rel).read_bytes() == (release / rel).read_bytes()


def test_cli_downloads_tables_and_cohort_images_verified(tmp_path, release, server, captured):
    src, images = release
    root = tmp_path / "data"
    rc = main(["fetch", "--data-root", str(root), "--cohort", str(cohort_csv(tmp_path, images[:4])),
               "--base-url", server.base_url, "--workers", "3"])
    assert rc == 0
    # 2.1.0 by default: the radiologist labels come with the tables
    for rel in mimic_release.TABLES + (mimic_release.GOLD_TABLE, mimic_release.SUMS) + tuple(images[:4]):
        assert same(src, root, rel), rel
    assert not (root / images[4]).exists()      # only the cohort's images
    assert not list(root.rglob("*.part"))
    assert sorted(r.rel for r in server.requests_for(".jpg")) == sorted(images[:4])
    state = physionet._load_state(root)
    assert set(state) == set(mimic_release.TABLES) | {mimic_release.GOLD_TABLE} | set(images[:4])
    out = captured().out
    assert "images: 4 downloaded" in out and "0 failed" in out


def test_release_2_0_0_has_no_radiologist_labels_and_a_missing_label_file_is_not_fatal(tmp_path, release, server,
                                                                                      captured):
    src, images = release
    assert not mimic_release.has_gold_labels("2.0.0") and mimic_release.has_gold_labels("2.1.0")
    old = physionet.fetch_release_tables(tmp_path / "old", "2.0.0", server.base_url, progress=False)
    assert old.ok and not (tmp_path / "old" / mimic_release.GOLD_TABLE).exists()
    (src / mimic_release.GOLD_TABLE).unlink()   # a mirror without it: the cohort does not need it
    rc = main(["fetch", "--data-root", str(tmp_path / "new"), "--cohort", str(cohort_csv(tmp_path, images[:1])),
               "--base-url", server.base_url])
    assert rc == 0
    assert f"warning: {mimic_release.GOLD_TABLE} could not be fetched" in captured().err


def test_rerun_skips_complete_files_without_requests_or_credentials(tmp_path, release, server, monkeypatch):
    src, images = release
    root = tmp_path / "data"
    assert get(server, root, images).ok
    before = len(server.requests)
    monkeypatch.delenv("PHYSIONET_PASSWORD")    # nothing to download: no credentials needed
    monkeypatch.setattr(physionet, "sha256_file", lambda path: pytest.fail("re-hashed a verified file"))
    summary = get(server, root, images)
    assert summary.ok and sorted(summary.skipped) == sorted(images) and not summary.downloaded
    assert len(server.requests) == before


def test_existing_file_that_does_not_match_is_replaced(tmp_path, release, server):
    src, images = release
    root = tmp_path / "data"
    assert get(server, root, images[:2]).ok
    (root / images[0]).write_bytes(b"truncated")
    summary = get(server, root, images[:2])
    assert summary.downloaded == [images[0]] and summary.skipped == [images[1]]
    assert same(src, root, images[0])


def test_dropped_connection_resumes_with_range(tmp_path, release, server):
    src, images = release
    root = tmp_path / "data"
    server.faults[images[0]] = ["drop", "drop"]
    summary = get(server, root, images[:1])
    assert summary.ok and same(src, root, images[0])
    ranges = [r.range for r in server.requests_for(images[0])]
    assert ranges[0] is None and len(ranges) == 3
    assert all(r and r.startswith("bytes=") and int(r[6:].rstrip("-")) > 0 for r in ranges[1:])


def test_stale_part_restarts_from_zero_when_server_ignores_range(tmp_path, release, server):
    src, images = release
    root = tmp_path / "data"
    part = root / (images[0] + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes((src / images[0]).read_bytes()[:1000])
    server.faults[images[0]] = ["ignore-range"]
    summary = get(server, root, images[:1])
    assert summary.ok and same(src, root, images[0]) and not part.exists()
    assert [r.range for r in server.requests_for(images[0])] == ["bytes=1000-"]


@pytest.mark.parametrize("faults", [["500"], ["503", "429"]])
def test_transient_server_errors_are_retried(tmp_path, release, server, faults):
    src, images = release
    root = tmp_path / "data"
    server.faults[images[1]] = list(faults)
    summary = get(server, root, images[:2])
    assert summary.ok and same(src, root, images[1])
    assert [r.status for r in server.requests_for(images[1])] == [int(f) for f in faults] + [200]


def test_retries_are_bounded(tmp_path, release, server):
    src, images = release
    server.always[images[0]] = "503"
    summary = get(server, tmp_path / "data", images[:1], attempts=3)
    assert "gave up after 3 attempts (HTTP 503" in summary.failed[images[0]]
    assert len(server.requests_for(images[0])) == 3


def test_checksum_mismatch_is_downloaded_again_once(tmp_path, release, server):
    src, images = release
    root = tmp_path / "data"
    server.faults[images[0]] = ["corrupt"]
    summary = get(server, root, images[:1])
    assert summary.ok and same(src, root, images[0])
    assert [r.range for r in server.requests_for(images[0])] == [None, None]    # the retry starts at zero


def test_always_corrupt_file_fails_and_leaves_nothing(tmp_path, release, server, captured):
    src, images = release
    root = tmp_path / "data"
    server.always[images[0]] = "corrupt"
    rc = main(["fetch", "--data-root", str(root), "--cohort", str(cohort_csv(tmp_path, images[:3])),
               "--base-url", server.base_url])
    assert rc == 1
    assert not (root / images[0]).exists() and not (root / (images[0] + ".part")).exists()
    assert same(src, root, images[1]) and same(src, root, images[2])
    assert len(server.requests_for(images[0])) == 2
    out = captured().out
    assert f"FAILED {images[0]}: checksum mismatch twice" in out


def test_missing_file_is_listed_as_failed(tmp_path, release, server, captured):
    src, images = release
    root = tmp_path / "data"
    missing = images[0].replace(".jpg", "0.jpg")
    rc = main(["fetch", "--data-root", str(root), "--cohort", str(cohort_csv(tmp_path, [missing, images[1]])),
               "--base-url", server.base_url])
    assert rc == 1 and same(src, root, images[1])
    # not in the release's checksum list (fetched a second time to be sure): never requested, never kept unverified
    assert server.requests_for(missing) == [] and len(server.requests_for("SHA256SUMS.txt")) == 2
    output = captured()
    assert f"FAILED {missing}: not listed in SHA256SUMS.txt (fetched twice): cannot be verified" in output.out
    assert "1 file(s) failed" in output.err
    assert not (root / missing).exists()


@pytest.mark.parametrize("password", ["wrong-password", None])
def test_refused_credentials_stop_with_one_clear_error(tmp_path, release, server, monkeypatch, captured, password):
    src, images = release
    root = tmp_path / "data"
    if password:
        monkeypatch.setenv("PHYSIONET_PASSWORD", password)
    else:   # the right password for another account, one that has not signed the agreement
        monkeypatch.setenv("PHYSIONET_USERNAME", "bob")
    with pytest.raises(AuthError) as info:
        get(server, root, images)
    assert len(server.requests) == 1        # SHA256SUMS.txt, then nothing
    message = str(info.value)
    assert "HTTP 401" in message and "data use agreement" in message
    assert PASSWORD not in message + repr(info.value)
    # with the checksums already here, the first image is the probe: still no retry storm
    (root / mimic_release.SUMS).write_bytes((src / mimic_release.SUMS).read_bytes())
    rc = main(["fetch", "--data-root", str(root), "--cohort", str(cohort_csv(tmp_path, images)),
               "--base-url", server.base_url, "--workers", "8"])
    assert rc == 2 and len(server.requests) <= 3
    err = captured().err
    assert err.splitlines()[-1].startswith("error: PhysioNet refused") and "Traceback" not in err


def test_redirects_keep_credentials_on_the_same_host_only(tmp_path, release, server):
    src, images = release
    root = tmp_path / "data"
    other = FakePhysioNet(src, USER, PASSWORD).start()
    try:
        server.redirects[images[0]] = server.base_url + "./" + images[0]   # same host: still authorised
        server.redirects[images[2]] = other.base_url + images[2]           # another host: no Authorization
        with pytest.raises(AuthError):
            get(server, root, images[:3])
        assert same(src, root, images[0])
        assert [(r.status, r.authorized) for r in server.requests_for(images[0])] == [(302, True), (200, True)]
        assert [(r.status, r.authorized) for r in other.requests] == [(401, False)]
    finally:
        other.stop()


def test_disk_full_is_a_clear_error_and_leaves_no_part(tmp_path, release, server, monkeypatch):
    src, images = release
    root = tmp_path / "data"
    assert get(server, root, []).ok          # SHA256SUMS.txt in place

    class FullDisk:
        def __init__(self, file):
            self.file = file
        def __enter__(self):
            return self
        def __exit__(self, *exc):
            self.file.close()
        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    real_open = open
    monkeypatch.setattr(transfer, "open", lambda path, mode="r", *a, **k: FullDisk(real_open(path, mode, *a, **k))
                        if str(path).endswith(".part") else real_open(path, mode, *a, **k), raising=False)
    with pytest.raises(DiskFullError, match="no space left on device under .* free about"):
        get(server, root, images)
    assert not list(root.rglob("*.part")) and not list(root.rglob("*.jpg"))


def test_credentials_from_netrc_and_hidden(tmp_path_factory, monkeypatch):
    monkeypatch.delenv("PHYSIONET_USERNAME")
    monkeypatch.delenv("PHYSIONET_PASSWORD")
    netrc_file = tmp_path_factory.mktemp("home2") / "netrc"
    netrc_file.write_text(f"machine physionet.org\n  login {USER}\n  password {PASSWORD}\n")
    netrc_file.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc_file))
    creds = get_credentials()
    assert creds.username == USER
    assert creds.authorization() == "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    assert PASSWORD not in repr(creds) + str(creds) + f"{creds}" + repr([creds])
    with pytest.raises(TypeError):
        pickle.dumps(creds)


def test_netrc_download_end_to_end(tmp_path, tmp_path_factory, release, server, monkeypatch):
    src, images = release
    monkeypatch.delenv("PHYSIONET_USERNAME")
    monkeypatch.delenv("PHYSIONET_PASSWORD")
    netrc_file = tmp_path_factory.mktemp("home3") / "netrc"
    netrc_file.write_text(f"machine 127.0.0.1 login {USER} password {PASSWORD}\n")
    monkeypatch.setenv("NETRC", str(netrc_file))
    assert get(server, tmp_path / "data", images[:1]).ok


def test_missing_credentials_name_the_three_ways(monkeypatch):
    monkeypatch.delenv("PHYSIONET_PASSWORD")
    monkeypatch.setattr(sys, "stdin", types.SimpleNamespace(isatty=lambda: False))
    with pytest.raises(UserError, match="PHYSIONET_USERNAME and PHYSIONET_PASSWORD.*netrc.*terminal"):
        get_credentials()


def test_print_gsutil_uses_no_network(tmp_path, release, server, captured):
    src, images = release
    rc = main(["fetch", "--data-root", str(tmp_path / "data"), "--cohort", str(cohort_csv(tmp_path, images[:2])),
               "--base-url", server.base_url, "--print-gsutil"])
    assert rc == 0 and server.requests == []
    out = captured().out
    assert "gs://<bucket-from-physionet-page>" in out and 'gsutil -u "$PROJECT" -m cp' in out
    assert "requester pays" in out and "xargs -P 8" in out
    assert images[0] in out.splitlines() and images[1] in out.splitlines()
    assert f'"$BUCKET/{mimic_release.TABLES[0]}"' in out


def test_params_mode_builds_cohort_after_tables(tmp_path, release, server, monkeypatch):
    src, images = release
    root = tmp_path / "data"
    params = tmp_path / "p.yaml"
    params.write_text(f"data_root: {root}\nname: fetchtest\nval_fraction: 0.1\n")
    seen = {}

    def build_cohort(data_root, p):
        seen["tables"] = all((root / t).is_file() for t in mimic_release.TABLES)
        seen["data_root"] = str(data_root)
        return pd.DataFrame({"path": images[:2]}), None
    monkeypatch.setattr(physionet, "build_cohort", build_cohort)
    assert main(["fetch", "--params", str(params), "--base-url", server.base_url]) == 0
    assert seen == {"tables": True, "data_root": str(root)}
    assert same(src, root, images[0]) and same(src, root, images[1]) and not (root / images[2]).exists()


def test_bad_inputs_are_user_errors(tmp_path, release, server):
    src, images = release
    with pytest.raises(UserError, match="relative to the data root"):
        get(server, tmp_path / "data", ["../../etc/passwd"])
    with pytest.raises(UserError, match="must not contain a user name"):
        physionet.fetch(tmp_path, images, base_url=f"https://{USER}:{PASSWORD}@physionet.org/x/")
    with pytest.raises(UserError, match="use an https:// URL"):
        physionet.fetch(tmp_path, images, base_url="http://physionet.org/files/mimic-cxr-jpg/2.1.0/")
    bad = tmp_path / "bad.csv"
    bad.write_text("dicom_id\nabc\n")
    assert main(["fetch", "--data-root", str(tmp_path), "--cohort", str(bad), "--base-url", server.base_url]) == 2
    assert server.requests == []


def test_read_checksums_formats(tmp_path):
    sha = "ab" * 32
    path = tmp_path / "SHA256SUMS.txt"
    path.write_text(f"{sha} files/a.jpg\n{sha.upper()}  files/b.jpg\n{sha} *files/c d.jpg\r\n\n")
    assert read_checksums(path) == {"files/a.jpg": sha, "files/b.jpg": sha, "files/c d.jpg": sha}
    path.write_text("not a checksum line\n")
    with pytest.raises(UserError, match="line 1"):
        read_checksums(path)


def test_retry_delay_is_jittered_exponential_and_honours_retry_after():
    delays = [retry_delay(4, 0.5) for _ in range(200)]
    assert 0 <= min(delays) and max(delays) <= 8.0 and len(set(delays)) > 100
    assert max(retry_delay(30, 1.0, cap=60.0) for _ in range(50)) <= 60.0
    assert retry_delay(0, 1.0, retry_after=7.0) == 7.0
    assert parse_retry_after("12") == 12.0
    assert 0 < parse_retry_after("Wed, 21 Oct 2099 07:28:00 GMT")
    assert parse_retry_after("soon") is None


@pytest.mark.probe(issue=15, kind="silent")
def test_a_damaged_checksum_list_is_fetched_again_and_never_trusted(tmp_path, release, server):
    src, images = release
    server.faults["SHA256SUMS.txt"] = ["mangle-path"]        # the list's own transfer is damaged, once
    summary = get(server, tmp_path / "ok", images)
    assert summary.ok and all(same(src, tmp_path / "ok", rel) for rel in images)
    assert len(server.requests_for("SHA256SUMS.txt")) == 2
    server.always["SHA256SUMS.txt"] = "mangle-path"           # damaged every time: stop, keep nothing unverified
    with pytest.raises(UserError, match=r"SHA256SUMS.txt line \d+: .*downloaded again and is still malformed"):
        get(server, tmp_path / "bad", images)
    assert not list((tmp_path / "bad").glob("files/**/*.jpg"))


@pytest.mark.probe(issue=15, kind="late")
def test_a_server_that_is_gone_stops_the_fetch_within_seconds(tmp_path):
    import socket
    import time

    with socket.socket() as probe:                            # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    paths = [f"files/p10/p{10000000 + i}/s{50000000 + i}/{i:08x}-0000aaaa-1111bbbb-2222cccc-3333dddd.jpg"
             for i in range(1000)]
    root = tmp_path / "data"
    root.mkdir()
    (root / "SHA256SUMS.txt").write_text("".join(f"{'ab' * 32}  {rel}\n" for rel in paths))
    started = time.monotonic()
    with pytest.raises(UserError, match=r"the server is unreachable: .* rerun the same command to continue"):
        physionet.fetch(root, paths, base_url=f"http://127.0.0.1:{port}/files/mimic-cxr-jpg/2.1.0/", workers=8,
                        credentials=transfer.Credentials("someone", "secret"), progress=False)   # default backoff
    assert time.monotonic() - started < 30


def test_fetch_demographics_gets_two_mimic_iv_tables_and_names_its_own_agreement(tmp_path, monkeypatch, captured):
    import hashlib

    from cxrlib.data import demographics

    source = tmp_path / "mimiciv"
    for rel in demographics.mimic_iv_paths("3.1") + ["hosp/labevents.csv.gz"]:
        (source / rel).parent.mkdir(parents=True, exist_ok=True)
        (source / rel).write_bytes(rel.encode() * 50)
    (source / "SHA256SUMS.txt").write_text("".join(
        f"{hashlib.sha256((source / rel).read_bytes()).hexdigest()}  {rel}\n"
        for rel in ["hosp/admissions.csv.gz", "hosp/labevents.csv.gz", "hosp/patients.csv.gz"]))
    fake = FakePhysioNet(source, USER, PASSWORD, prefix="/files/mimiciv/3.1/").start()
    try:
        assert main(["fetch-demographics", "--data-root", str(tmp_path / "cxr"), "--base-url", fake.base_url]) == 0
        got = tmp_path / "cxr" / "mimic-iv"
        assert sorted(p.relative_to(got).as_posix() for p in got.rglob("*.csv.gz")) == [
            "hosp/admissions.csv.gz", "hosp/patients.csv.gz"]   # only the two the audit needs
        assert demographics.mimic_iv_paths("1.0") == ["core/patients.csv.gz", "core/admissions.csv.gz"]
        monkeypatch.setenv("PHYSIONET_PASSWORD", "n0t-the-Passw0rd")
        assert main(["fetch-demographics", "--mimic-iv-root", str(tmp_path / "other"),
                     "--base-url", fake.base_url]) == 2
        err = captured().err
        assert "MIMIC-IV data use agreement" in err and "separate credentialed project" in err
        assert "n0t-the-Passw0rd" not in err
    finally:
        fake.stop()


def test_vindr_test_set_is_fetched_with_the_same_credentials_resume_and_checksums(tmp_path):
    """VinDr-CXR's PhysioNet layout on the emulator: the test labels, then only the DICOMs they list."""
    from cxrlib.data import external_fetch

    release = tmp_path / "vindr-release"
    ids = ["0a1b2c", "3d4e5f"]
    (release / "annotations").mkdir(parents=True)
    (release / "test").mkdir()
    (release / "train").mkdir()
    (release / "annotations" / "image_labels_test.csv").write_text(
        "image_id,Cardiomegaly,No finding\n" + "".join(f"{i},0,1\n" for i in ids))
    for name in ids:
        (release / "test" / f"{name}.dicom").write_bytes(b"\0" * 128 + b"DICM" + name.encode() * 50)
    (release / "train" / "ffff.dicom").write_bytes(b"not wanted")
    files = [p for p in release.rglob("*") if p.is_file()]
    (release / "SHA256SUMS.txt").write_text("".join(
        f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.relative_to(release).as_posix()}\n" for p in files))
    fake = FakePhysioNet(release, USER, PASSWORD, prefix="/files/vindr-cxr/1.0.0/").start()
    try:
        fake.faults["test/3d4e5f.dicom"] = ["drop"]   # cut mid-file: resumed, then verified
        root = tmp_path / "vindr"
        labels, images = external_fetch.fetch_vindr_test(root, base_url=fake.base_url, workers=2, progress=False,
                                                         backoff=0.01)
        assert labels.ok and images.ok
        assert sorted(p.name for p in (root / "test").iterdir()) == ["0a1b2c.dicom", "3d4e5f.dicom"]
        assert not (root / "train").exists()
        assert (root / "test" / "3d4e5f.dicom").read_bytes() == (release / "test" / "3d4e5f.dicom").read_bytes()
        before = len(fake.requests)
        labels, images = external_fetch.fetch_vindr_test(root, base_url=fake.base_url, progress=False)
        assert images.ok and len(images.skipped) == 2 and len(fake.requests) == before   # a rerun asks nothing
    finally:
        fake.stop()
