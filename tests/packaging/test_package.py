"""The Debian package: cpack builds shmkv_<version>_<arch>.deb from the build tree; its contents, its
control data, the systemd units, the tmpfiles.d entry and the default configuration are checked,
and the packaged server starts from the packaged configuration.

Run by ctest (`package`) with SHMKV_BUILD_DIR and SHMKV_VERSION set; needs cpack and dpkg-deb.
"""
import configparser
import os
import pathlib
import re
import shutil
import signal
import subprocess

import pytest

BUILD_DIR = pathlib.Path(os.environ.get("SHMKV_BUILD_DIR", pathlib.Path(__file__).parents[2] / "build"))
VERSION = os.environ.get("SHMKV_VERSION", "")
SOURCE_DIR = pathlib.Path(__file__).parents[2]


def run(*cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600, **kw)


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    for tool in ("cpack", "dpkg-deb", "dpkg"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed (scripts/install-deps.sh installs it)")
    out = tmp_path_factory.mktemp("cpack")
    r = subprocess.run(["cpack", "--config", str(BUILD_DIR / "CPackConfig.cmake"), "-B", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    arch = run("dpkg", "--print-architecture").stdout.strip()
    deb = out / f"shmkv_{VERSION}_{arch}.deb"
    assert deb.exists(), f"no {deb.name} in {sorted(p.name for p in out.iterdir())}"
    root = tmp_path_factory.mktemp("root")
    run("dpkg-deb", "-x", str(deb), str(root))
    return deb, root


def test_contents(package):
    deb, _ = package
    listing = run("dpkg-deb", "-c", str(deb)).stdout
    # "mode owner size date time ./path" (links: "./path -> target")
    paths = {line.split(maxsplit=5)[5].split(" -> ")[0].lstrip(".").rstrip("/") or "/"
             for line in listing.splitlines()}
    for want in ["/usr/bin/shmkv-server", "/usr/bin/shmkv", "/usr/bin/shmkv-file-worker",
                 "/usr/include/shmkv/client.h", "/etc/shmkv/shmkv.toml",
                 "/usr/lib/systemd/system/shmkv-server.service", "/usr/lib/systemd/system/shmkv-server@.service",
                 "/usr/lib/tmpfiles.d/shmkv.conf", "/usr/lib/sysusers.d/shmkv.conf",
                 "/usr/share/doc/shmkv/shmkv-dashboard.json", "/usr/share/doc/shmkv/operations.md"]:
        assert want in paths, f"{want} is not in the package:\n{listing}"
    assert any(re.search(r"/usr/lib/.*libshmkv-client\.so", p) for p in paths), listing
    if (BUILD_DIR / "python").exists():
        assert "/usr/lib/python3/dist-packages/shmkv/__init__.py" in paths, listing
    # Nothing escapes the standard places.
    for p in paths:
        assert p.startswith(("/usr/", "/etc/")) or p in ("/", "/usr", "/etc"), p
    assert not any(p.startswith("/usr/local") for p in paths)


def test_control_data(package):
    deb, root = package
    info = run("dpkg-deb", "-I", str(deb)).stdout
    fields = dict(re.findall(r"^ (\w[\w-]*): (.*)$", info, re.M))
    assert fields["Package"] == "shmkv"
    assert fields["Version"] == VERSION
    assert fields["Architecture"] == run("dpkg", "--print-architecture").stdout.strip()
    # dpkg-shlibdeps found the shared libraries the binaries need.
    assert "libc6" in fields["Depends"] and "libstdc++6" in fields["Depends"], fields["Depends"]
    needed = set()
    for elf in ("usr/bin/shmkv-server", "usr/bin/shmkv", "usr/bin/shmkv-file-worker"):
        needed |= set(re.findall(r"\(NEEDED\).*\[(.*)\]", run("readelf", "-d", str(root / elf)).stdout))
    assert "libc.so.6" in needed
    for soname, package_prefix in (("libcpp-httplib.so", "libcpp-httplib"), ("libfmt.so", "libfmt"),
                                   ("liburing.so", "liburing")):
        if any(n.startswith(soname) for n in needed):
            assert package_prefix in fields["Depends"], (soname, fields["Depends"])
    for script in ("postinst", "prerm", "postrm", "conffiles"):
        assert re.search(rf"^\s+\d+ bytes,\s+\d+ lines\s+\*?\s*{script}\b", info, re.M), info
    conffiles = run("dpkg-deb", "--info", str(deb), "conffiles").stdout.split()
    assert conffiles == ["/etc/shmkv/shmkv.toml"]


def unit(root, name):
    p = configparser.ConfigParser(strict=False, interpolation=None)
    p.optionxform = str
    p.read(root / "usr/lib/systemd/system" / name)
    return p


@pytest.mark.parametrize("name", ["shmkv-server.service", "shmkv-server@.service"])
def test_units_have_their_required_keys(package, name):
    _, root = package
    u = unit(root, name)
    assert u["Unit"]["Description"]
    svc = u["Service"]
    exec_start = svc["ExecStart"].split()
    assert exec_start[0] == "/usr/bin/shmkv-server" and (root / exec_start[0].lstrip("/")).exists()
    config = exec_start[exec_start.index("--config") + 1]
    if "%i" not in config:
        assert (root / config.lstrip("/")).exists(), config
    # Workers trust a server of their own user or root: root, without capabilities, group shmkv.
    assert svc["User"] == "root" and svc["Group"] == "shmkv"
    assert svc["CapabilityBoundingSet"] == "" and svc["NoNewPrivileges"] == "yes"
    assert svc["Type"] == "simple" and svc["Restart"] == "on-failure"
    assert svc["KillSignal"] == "SIGTERM"
    # The pool lives in /dev/shm, shared with the engines: a private /dev would hide it.
    assert svc.get("PrivateDevices", "no") == "no" and svc.get("PrivateIPC", "no") == "no"
    assert "/run/shmkv" in svc["ReadWritePaths"]
    assert u["Install"]["WantedBy"] == "multi-user.target"


def test_units_pass_systemd_analyze_verify(package, tmp_path):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed; the required keys are checked above")
    _, root = package
    # verify looks up ExecStart= on this machine: put the packaged binary where the unit says.
    for name in ("shmkv-server.service", "shmkv-server@test.service"):
        src = root / "usr/lib/systemd/system" / name.replace("@test", "@")
        dst = tmp_path / name
        dst.write_text(src.read_text().replace("/usr/bin/shmkv-server", str(root / "usr/bin/shmkv-server")))
        r = subprocess.run(["systemd-analyze", "verify", "--man=no", str(dst)], capture_output=True, text=True,
                           timeout=60)
        # Lines about other units on this machine (or its missing systemd) are not ours.
        ours = [line for line in (r.stdout + r.stderr).splitlines() if name in line or dst.name in line]
        assert not ours, "\n".join(ours)


def test_tmpfiles_and_sysusers_entries(package):
    _, root = package
    lines = [line.split() for line in (root / "usr/lib/tmpfiles.d/shmkv.conf").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines == [["d", "/run/shmkv", "0750", "root", "shmkv", "-"]]
    users = [line.split()[:2] for line in (root / "usr/lib/sysusers.d/shmkv.conf").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert users == [["g", "shmkv"]]


def server_options(binary):
    """The long options of `shmkv-server --help`, less help, version and config."""
    text = run(str(binary), "--help").stdout
    opts = set(re.findall(r"^\s+(?:-\w,\s*)?--([a-z][a-z0-9-]*)", text, re.M))
    return opts - {"help", "version", "config"}


def test_default_config_names_every_option(package):
    _, root = package
    toml = (root / "etc/shmkv/shmkv.toml").read_text()
    keys = set(re.findall(r"^#? ?([a-z][a-z0-9-]*) = ", toml, re.M))
    opts = server_options(root / "usr/bin/shmkv-server")
    assert "pool-size" in opts and "disk-dir" in opts
    assert not opts - keys, f"options of shmkv-server --help missing from shmkv.toml: {sorted(opts - keys)}"
    assert not keys - opts - {"metrics-address"}, f"shmkv.toml names unknown options: {sorted(keys - opts)}"
    # The socket the configuration names is in the tmpfiles.d directory.
    assert re.search(r'^socket = "/run/shmkv/', toml, re.M)


def start(binary, args):
    proc = subprocess.Popen([str(binary), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if not line.startswith("shmkv-server ready:"):
        proc.kill()
        _, err = proc.communicate(timeout=10)
        pytest.fail(f"the packaged server did not start: {line!r} {err}")
    return proc


def test_the_packaged_server_runs_from_the_packaged_config(package, tmp_path):
    _, root = package
    server = root / "usr/bin/shmkv-server"
    toml = (root / "etc/shmkv/shmkv.toml").read_text()
    name = f"pkgtest{os.getpid()}"
    overrides = ["--socket", str(tmp_path / "s.sock"), "--shm-name", name, "--pool-size", "8MiB", "--no-prefault"]
    # As shipped (the command line wins over the file for the machine-specific paths).
    proc = start(server, ["--config", str(root / "etc/shmkv/shmkv.toml"), *overrides])
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    # Every commented option taken in, as a user would uncomment it.
    (tmp_path / "l2").mkdir()
    full = re.sub(r"^# ([a-z][a-z0-9-]*) = ", r"\1 = ", toml, flags=re.M)
    full = full.replace('"/var/lib/shmkv/l2"', f'"{tmp_path / "l2"}"').replace('"64GiB"', '"64MiB"')
    full = full.replace('"/usr/bin/shmkv-file-worker"', f'"{root / "usr/bin/shmkv-file-worker"}"')
    full = full.replace('"127.0.0.1:9464"', '"127.0.0.1:0"')
    # No Redis here: the L3 tier starts unavailable (and says so), which is what an unreachable one does.
    full = full.replace('"redis://10.0.0.5:7000,10.0.0.6:7000,10.0.0.7:7000"', '"redis://127.0.0.1:1"')
    full = re.sub(r"^redis-password-file = .*$", "", full, flags=re.M)
    full = re.sub(r"^shm-dir = .*$", "", full, flags=re.M)  # not with disk-dir (and no hugetlbfs here)
    opts = server_options(server)
    if "metrics-address" not in opts:  # the server before --metrics-address
        full = re.sub(r"^metrics-address = .*$", "", full, flags=re.M)
    (tmp_path / "full.toml").write_text(full)
    proc = start(server, ["--config", str(tmp_path / "full.toml"), *overrides])
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0


def test_maintainer_scripts_parse(package, tmp_path):
    deb, _ = package
    run("dpkg-deb", "-e", str(deb), str(tmp_path / "control"))
    for script in ("postinst", "prerm", "postrm"):
        path = tmp_path / "control" / script
        assert os.access(path, os.X_OK), script
        run("sh", "-n", str(path))
    # The group exists before the socket directory that names it is created.
    post = (tmp_path / "control" / "postinst").read_text()
    assert post.index("sysusers") < post.index("systemd-tmpfiles")
