"""An image with bash for E2B's SDK, which runs every command as `/bin/bash -l -c`: static busybox
for the tools, and the host's bash with the libraries it loads, as a `docker save` archive."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile
from pathlib import Path


def bash_root(root: Path) -> None:
    """busybox (static) for the tools, and the host's bash with the libraries it loads."""
    (root / "bin").mkdir(parents=True)
    for d in ("etc", "root", "tmp"):
        (root / d).mkdir()
    (root / "bin" / "busybox").write_bytes(Path("/bin/busybox").read_bytes())
    (root / "bin" / "busybox").chmod(0o755)
    applets = subprocess.run(["/bin/busybox", "--list"], capture_output=True, text=True, check=True)
    for applet in applets.stdout.split():
        if applet not in ("busybox", "bash", "sh"):
            (root / "bin" / applet).symlink_to("busybox")
    (root / "bin" / "sh").symlink_to("busybox")
    bash = Path("/bin/bash").resolve()
    (root / "bin" / "bash").write_bytes(bash.read_bytes())
    (root / "bin" / "bash").chmod(0o755)
    ldd = subprocess.run(["ldd", str(bash)], capture_output=True, text=True, check=True).stdout
    for line in ldd.splitlines():
        path = next((p for p in line.split() if p.startswith("/")), None)
        if path:
            dest = root / path.lstrip("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(Path(path).resolve().read_bytes())
            dest.chmod(0o755)
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")


def docker_archive(root: Path, out: Path, tag: str) -> None:
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as t:
        for path in sorted(root.rglob("*")):
            t.add(path, arcname=str(path.relative_to(root)), recursive=False)
    layer_bytes = layer.getvalue()
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/bin/sh"]}}).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    manifest = json.dumps([{"Config": config_name, "RepoTags": [tag], "Layers": ["layer.tar"]}]).encode()
    with tarfile.open(out, "w") as t:
        for name, data in (("manifest.json", manifest), (config_name, config), ("layer.tar", layer_bytes)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))




def bash_image_archive(work: Path, tag: str) -> Path:
    """`work/bash.tar`, an image tagged `tag`."""
    bash_root(work / "root")
    archive = work / "bash.tar"
    docker_archive(work / "root", archive, tag)
    return archive
