import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from hutch.images import layout
from hutch.images.layout import Descriptor, OciLayout, is_oci_layout, parse_image_config
from hutch.model.errors import Invalid, NotFound, Unsupported
from hutch.model.image import ImageConfig

from .ocibuild import blob_path, write_blob, write_oci_layout

HEX = "ab" * 32


def tar_of(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def read_layers(path: Path, ref: str | None = None) -> list[bytes]:
    """The uncompressed tars of the image's layers, through open_layer."""
    oci = OciLayout(path)
    image = oci.image(ref)
    out = []
    for i, desc in enumerate(image.layers):
        with oci.open_layer(desc, image.diff_ids[i] if image.diff_ids else None) as stream:
            out.append(stream.read())
    return out


def manifest_of(path: Path, digest: str) -> dict[str, object]:
    doc: dict[str, object] = json.loads(blob_path(path, digest).read_bytes())
    return doc


# -- configs ------------------------------------------------------------------------


def test_parse_image_config_reads_every_field() -> None:
    doc = {
        "config": {
            "Entrypoint": ["/docker-entrypoint.sh"],
            "Cmd": ["nginx", "-g", "daemon off;"],
            "Env": ["PATH=/usr/bin", "NGINX_VERSION=1.25"],
            "WorkingDir": "/srv",
            "User": "101:101",
            "StopSignal": "SIGQUIT",
            "ExposedPorts": {"80/tcp": {}, "443/tcp": {}},
        }
    }
    assert parse_image_config(doc) == ImageConfig(
        entrypoint=("/docker-entrypoint.sh",),
        cmd=("nginx", "-g", "daemon off;"),
        env=("PATH=/usr/bin", "NGINX_VERSION=1.25"),
        working_dir="/srv",
        user="101:101",
        stop_signal="SIGQUIT",
        exposed_ports=("443/tcp", "80/tcp"),
    )


@pytest.mark.parametrize(
    "doc",
    [
        {},
        {"config": None},
        {"config": {}},
        {
            "config": {
                "Entrypoint": None,
                "Cmd": None,
                "Env": None,
                "WorkingDir": None,
                "User": None,
                "StopSignal": None,
                "ExposedPorts": None,
            }
        },
    ],
)
def test_parse_image_config_treats_missing_and_null_as_empty(doc: dict[str, object]) -> None:
    assert parse_image_config(doc) == ImageConfig()


def test_parse_image_config_refuses_wrong_types() -> None:
    with pytest.raises(Invalid, match="Cmd must be a list of strings"):
        parse_image_config({"config": {"Cmd": "echo hi"}})
    with pytest.raises(Invalid, match="Cmd must be a list of strings"):
        parse_image_config({"config": {"Cmd": [1]}})
    with pytest.raises(Invalid, match="WorkingDir must be a string"):
        parse_image_config({"config": {"WorkingDir": ["/"]}})


# -- finding the image --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("docker", "nested", "compression"),
    [
        (False, False, "gzip"),
        (False, False, "none"),
        (False, False, "zstd"),
        (False, True, "gzip"),
        (True, False, "gzip"),
        (True, True, "gzip"),
    ],
)
def test_reads_oci_and_docker_layouts(
    tmp_path: Path, docker: bool, nested: bool, compression: str
) -> None:
    lower, upper = tar_of({"a": b"1"}), tar_of({"b": b"2"})
    digest = write_oci_layout(
        tmp_path,
        [lower, upper],
        {"Cmd": ["/bin/sh"], "User": "app"},
        docker_media_types=docker,
        index_of_index=nested,
        compression=compression,
    )
    assert is_oci_layout(tmp_path)
    image = OciLayout(tmp_path).image()
    assert image.manifest_digest == digest
    assert image.config == ImageConfig(cmd=("/bin/sh",), user="app")  # not the arm64 decoy's
    assert len(image.layers) == 2
    assert read_layers(tmp_path) == [lower, upper]


def test_picks_by_ref_name_or_the_first_image(tmp_path: Path) -> None:
    first = write_oci_layout(tmp_path, [tar_of({"a": b"1"})], {"Cmd": ["one"]}, ref="one")
    second = write_oci_layout(tmp_path, [tar_of({"a": b"2"})], {"Cmd": ["two"]}, ref="two")
    oci = OciLayout(tmp_path)
    assert oci.image().manifest_digest == first
    assert oci.image("one").manifest_digest == first
    assert oci.image("two").manifest_digest == second
    assert oci.image("two").config.cmd == ("two",)
    with pytest.raises(NotFound, match=r"'three' is not in .*it has: one, two"):
        oci.image("three")


def test_refuses_images_for_other_platforms(tmp_path: Path) -> None:
    write_oci_layout(tmp_path, [], {}, platform=("linux", "arm64"))
    with pytest.raises(Unsupported, match="linux/arm64; hutch runs linux/amd64"):
        OciLayout(tmp_path).image()


def test_refuses_an_index_without_our_platform(tmp_path: Path) -> None:
    data = json.dumps(
        {
            "schemaVersion": 2,
            "manifests": [
                {
                    "mediaType": layout.OCI_MANIFEST,
                    "digest": f"sha256:{HEX}",
                    "size": 10,
                    "platform": {"os": "linux", "architecture": "s390x"},
                }
            ],
        }
    ).encode()
    (tmp_path / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    digest = write_blob(tmp_path, data)
    (tmp_path / "index.json").write_text(
        json.dumps(
            {
                "schemaVersion": 2,
                "manifests": [{"mediaType": layout.OCI_INDEX, "digest": digest, "size": len(data)}],
            }
        )
    )
    with pytest.raises(Unsupported, match="no linux/amd64 image, only linux/s390x"):
        OciLayout(tmp_path).image()


def test_refuses_incomplete_layouts(tmp_path: Path) -> None:
    with pytest.raises(Invalid, match="oci-layout is missing"):
        OciLayout(tmp_path)
    (tmp_path / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    with pytest.raises(Invalid, match=r"index\.json is missing"):
        OciLayout(tmp_path).image()
    (tmp_path / "index.json").write_text('{"manifests": []}')
    with pytest.raises(Invalid, match="lists no manifests"):
        OciLayout(tmp_path).image()
    (tmp_path / "index.json").write_text("{not json")
    with pytest.raises(Invalid, match="not valid JSON"):
        OciLayout(tmp_path).image()
    (tmp_path / "oci-layout").write_text('{"imageLayoutVersion": "2.0.0"}')
    with pytest.raises(Unsupported, match=r"version '2\.0\.0'"):
        OciLayout(tmp_path)


def test_refuses_unknown_layer_types(tmp_path: Path) -> None:
    digest = write_oci_layout(tmp_path, [tar_of({"a": b"1"})], {})
    path = blob_path(tmp_path, digest)
    manifest = json.loads(path.read_bytes())
    manifest["layers"][0]["mediaType"] = "application/vnd.cncf.helm.chart.content.v1.tar+gzip"
    _replace_manifest(tmp_path, digest, manifest)
    with pytest.raises(Unsupported, match=r"helm.*cannot unpack"):
        OciLayout(tmp_path).image()


def test_refuses_docker_schema_1(tmp_path: Path) -> None:
    digest = write_oci_layout(tmp_path, [], {})
    _replace_manifest(tmp_path, digest, {"schemaVersion": 1, "fsLayers": []}, media_type="")
    with pytest.raises(Unsupported, match="schema 1"):
        OciLayout(tmp_path).image()


def _replace_manifest(
    path: Path, old: str, manifest: dict[str, object], media_type: str | None = None
) -> str:
    data = json.dumps(manifest).encode()
    new = write_blob(path, data)
    index = json.loads((path / "index.json").read_text())
    for desc in index["manifests"]:
        if desc["digest"] == old:
            desc.update(digest=new, size=len(data))
            if media_type is not None:
                desc["mediaType"] = media_type
    (path / "index.json").write_text(json.dumps(index))
    return new


# -- verification -------------------------------------------------------------------------------


def _corrupt(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_corrupt_manifest_and_config_are_refused(tmp_path: Path) -> None:
    digest = write_oci_layout(tmp_path, [tar_of({"a": b"1"})], {"Cmd": ["x"]})
    config = manifest_of(tmp_path, digest)["config"]
    assert isinstance(config, dict)
    _corrupt(blob_path(tmp_path, config["digest"]))
    with pytest.raises(Invalid, match=f"blob {config['digest']} does not match its digest"):
        OciLayout(tmp_path).image()
    _corrupt(blob_path(tmp_path, digest))
    with pytest.raises(Invalid, match=f"blob {digest} does not match its digest"):
        OciLayout(tmp_path).image()


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_corrupt_layer_is_refused_after_streaming(tmp_path: Path, compression: str) -> None:
    payload = os.urandom(50_000)  # incompressible, so the flipped byte lands in file data
    digest = write_oci_layout(tmp_path, [tar_of({"a": payload})], {}, compression=compression)
    layer = manifest_of(tmp_path, digest)["layers"][0]  # type: ignore[index]
    _corrupt(blob_path(tmp_path, layer["digest"]))
    with pytest.raises(Invalid, match=layer["digest"]):
        read_layers(tmp_path)


def test_layer_of_the_wrong_size_is_refused(tmp_path: Path) -> None:
    digest = write_oci_layout(tmp_path, [tar_of({"a": b"1"})], {})
    layer = manifest_of(tmp_path, digest)["layers"][0]  # type: ignore[index]
    path = blob_path(tmp_path, layer["digest"])
    path.write_bytes(path.read_bytes() + b"\0" * 100)
    with pytest.raises(Invalid, match=f"blob {layer['digest']} does not match its descriptor"):
        read_layers(tmp_path)


def test_diff_id_mismatch_is_refused(tmp_path: Path) -> None:
    digest = write_oci_layout(tmp_path, [tar_of({"a": b"1"})], {})
    manifest = manifest_of(tmp_path, digest)
    config_desc = manifest["config"]
    assert isinstance(config_desc, dict)
    config = json.loads(blob_path(tmp_path, config_desc["digest"]).read_bytes())
    config["rootfs"]["diff_ids"] = [f"sha256:{HEX}"]
    data = json.dumps(config).encode()
    config_desc.update(digest=write_blob(tmp_path, data), size=len(data))
    _replace_manifest(tmp_path, digest, manifest)
    with pytest.raises(Invalid, match=f"uncompressed layer sha256:{HEX} does not match"):
        read_layers(tmp_path)


def test_missing_and_symlinked_blobs_are_refused(tmp_path: Path) -> None:
    digest = write_oci_layout(tmp_path, [tar_of({"a": b"1"})], {})
    layer = manifest_of(tmp_path, digest)["layers"][0]  # type: ignore[index]
    path = blob_path(tmp_path, layer["digest"])
    moved = tmp_path / "elsewhere"
    path.rename(moved)
    with pytest.raises(Invalid, match=f"blob {layer['digest']} is missing"):
        read_layers(tmp_path)
    path.symlink_to(moved)  # same content, but a blob must not lead anywhere else on the host
    with pytest.raises(Invalid, match="is a symlink"):
        read_layers(tmp_path)


def test_zstd_without_the_tool_is_unsupported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_oci_layout(tmp_path, [tar_of({"a": b"1"})], {}, compression="zstd")
    monkeypatch.setattr("shutil.which", lambda *a, **kw: None)
    with pytest.raises(Unsupported, match="install zstd"):
        read_layers(tmp_path)


def test_trailing_data_after_the_tar_is_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(layout, "MAX_TRAILING_BYTES", 1000)
    write_oci_layout(tmp_path, [tar_of({"a": b"1"}) + b"\0" * 5000], {})
    oci = OciLayout(tmp_path)
    desc = oci.image().layers[0]
    with (
        pytest.raises(Invalid, match="after the end of its tar archive"),
        oci.open_layer(desc) as stream,
        tarfile.open(fileobj=stream, mode="r|") as tar,
    ):
        assert [m.name for m in tar] == ["a"]


def test_read_json_refuses_oversized_descriptors(tmp_path: Path) -> None:
    write_oci_layout(tmp_path, [], {})
    desc = Descriptor(layout.OCI_MANIFEST, f"sha256:{hashlib.sha256(b'').hexdigest()}", 10**9)
    with pytest.raises(Invalid, match="the limit is"):
        OciLayout(tmp_path).read_json(desc, layout.MAX_JSON_BYTES)


@pytest.mark.parametrize("compression", ["gzip", "none", "zstd"])
def test_unpacked_size_is_found_without_decompressing(tmp_path: Path, compression: str) -> None:
    tar = tar_of({"a": b"a" * 100_000, "b": b"b"})
    write_oci_layout(tmp_path, [tar], {}, compression=compression)
    oci = OciLayout(tmp_path)
    [desc] = oci.image().layers
    # gzip's trailer and an uncompressed blob say it exactly; zstd is guessed at (fourfold).
    expected = {"gzip": len(tar), "none": len(tar), "zstd": 4 * desc.size}[compression]
    assert oci.unpacked_size(desc) == expected
