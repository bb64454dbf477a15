"""Checkpoints, weights files and run folders are untrusted data: nothing they hold runs, reads the environment,
fetches, deletes, writes outside the run, or allocates more than the file holds; every refusal is one line.

Each hostile input carries a live payload: a marker file it would create, a folder it would delete, a request a
local HTTP server would see. Each guard has a negative control showing the payload works without it.
"""

from __future__ import annotations

import contextlib
import http.server
import io
import logging
import os
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import cv2
import hydra
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf, open_dict

import segkit
from segkit import SegkitError
from segkit.checkpoint_io import SegkitCheckpointIO, read_torch_file, sanitize_callback_state, torch_record_places
from segkit.cli import resume_in_place
from segkit.loading import load_model
from segkit.models.backbones import load_state_dict_file
from segkit.run_folder import check_run_folder, hydra_quote
from segkit.safe_config import net_options, plain_data
from segkit.tasks.evaluate import evaluate_from_config
from segkit.tasks.export import export_from_config
from segkit.tasks.predict import predict_from_config
from segkit.tasks.train import train
from tests.conftest import ROOT, TINY, compose_config

SMALL_UNET = ["model=unet_small", "model.base_width=4", "model.depth=2"]


class Payload:
    """Unpickling this calls ``os.mkdir(marker)``: what a crafted file would do with ``weights_only=False``."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


class Listener:
    """An HTTP server on 127.0.0.1 that records every request: a fetch or a leak would show here."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        listener = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                listener.paths.append(self.path)
                self.send_response(404)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture
def listener():
    server = Listener()
    yield server
    server.close()


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    run = tmp_path_factory.mktemp("run")
    cfg = compose_config("train", TINY + ["debug=limit", "test=false", *SMALL_UNET], output_dir=run)
    metrics = train(cfg)
    (run / ".hydra").mkdir()
    OmegaConf.save(cfg, run / ".hydra" / "config.yaml")
    last = run / "checkpoints" / "last.ckpt"
    return {"run": run, "last": last, "ckpt": torch.load(last, weights_only=True), "metrics": metrics}


def with_changes(ckpt: dict, **sections) -> dict:
    """A copy of ``ckpt`` with nested keys replaced: ``with_changes(c, hyper_parameters={"model.dropout": x})``."""
    import copy

    out = copy.deepcopy(ckpt)
    for section, changes in sections.items():
        for dotted, value in changes.items():
            node = out[section]
            *parents, last = dotted.split(".")
            for name in parents:
                node = node[int(name)] if isinstance(node, list) else node[name]
            node[int(last) if isinstance(node, list) else last] = value
    return out


def run_entry(entry: str, tmp_path: Path, ckpt: Path | None = None, run_dir: Path | None = None) -> None:
    out = tmp_path / f"out_{entry}"
    source = [f"ckpt={ckpt}"] if ckpt else [f"run_dir={run_dir}"]
    if entry == "eval":
        cfg = compose_config("eval", ["extras.print_config=false", "progress=false", *source], output_dir=out)
        with open_dict(cfg):
            cfg.output_dir = str(out)
        evaluate_from_config(cfg)
    elif entry == "predict":
        image = tmp_path / "input.png"
        cv2.imwrite(str(image), np.zeros((20, 24, 3), np.uint8))
        predict_from_config(compose_config("predict", [*source, f"input={image}", f"output={out}", "progress=false"]))
    else:
        export_from_config(compose_config("export", [*source, f"output={out}/m.onnx", "height=32", "width=32"]))


ENTRIES = ["eval", "predict", "export"]


def resolver_payloads(marker: Path, url: str) -> dict[str, tuple[dict, str]]:
    """Stored strings that run code, read the environment or send it out when OmegaConf resolves them."""
    create = "${oc.create:{_target_: os.mkdir, path: '" + str(marker) + "'}}"
    fetch = "${oc.create:{_target_: urllib.request.urlopen, url: '" + url + "/leak'}}"
    return {
        "model_create": ({"hyper_parameters": {"model.dropout": create}}, "model.dropout holds an interpolation"),
        "model_fetch": ({"hyper_parameters": {"model.base_width": fetch}}, "model.base_width holds an interpolation"),
        "model_env": ({"hyper_parameters": {"model.depth": "${oc.env:HOME}"}}, "model.depth holds an interpolation"),
        "escaped_data": (
            {"hyper_parameters": {"data.dataset.seed": "\\" + create}},
            "data.dataset.seed holds an interpolation",
        ),
        "escaped_model": (
            {"hyper_parameters": {"model.dropout": "\\" + fetch}},
            "model.dropout holds an interpolation",
        ),
        "class_name": (
            {"segkit": {"input.labels.classes.0.name": create}},
            "segkit.input.labels.classes.0.name holds an",
        ),
        "other_key": ({"hyper_parameters": {"tags": [create]}}, "hyper_parameters.tags.0 holds an interpolation"),
    }


@pytest.mark.parametrize("entry", ENTRIES)
def test_stored_interpolations_are_refused_and_nothing_runs(trained, tmp_path, listener, entry):
    marker = tmp_path / "pwned"
    for name, (changes, expected) in resolver_payloads(marker, listener.url).items():
        path = tmp_path / f"{name}.ckpt"
        torch.save(with_changes(trained["ckpt"], **changes), path)
        with pytest.raises(SegkitError, match=expected) as err:
            run_entry(entry, tmp_path, ckpt=path)
        assert "\n" not in str(err.value) and str(path) in str(err.value), (name, str(err.value))
        assert not marker.exists(), f"{name} ran code through {entry}"
    assert listener.paths == []


def test_the_resolver_payloads_are_live_without_the_guard(tmp_path, listener):
    """Negative control: Hydra's instantiation of the resolved values (after a second resolution for the escaped
    ones), as the older loader did, runs each payload."""
    marker = tmp_path / "pwned"
    for name, (changes, _) in resolver_payloads(marker, listener.url).items():
        value = next(iter(next(iter(changes.values())).values()))
        cfg = OmegaConf.create({"x": value[0] if isinstance(value, list) else value})
        if name.startswith("escaped"):
            cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))  # one resolution leaves a live one
        if name == "model_env":
            assert cfg.x == os.environ["HOME"]
            continue
        with contextlib.suppress(Exception):  # the 404 of the listener
            hydra.utils.instantiate(cfg)
    assert marker.is_dir() and listener.paths.count("/leak") == 2


def test_stored_configs_never_reach_omegaconf_or_hydra(trained, tmp_path, monkeypatch):
    """eval, predict, export and load_model with OmegaConf's resolution and Hydra's instantiation rigged to fail on
    any stored value: no code path hands them the checkpoint's data."""
    sentinel = "stored_value_7f3a"
    path = tmp_path / "marked.ckpt"
    changes = {"data.name": sentinel, "tags": [sentinel], "model.dropout": 0.0}
    torch.save(with_changes(trained["ckpt"], hyper_parameters=changes), path)
    seen: list[str] = []

    def rig(function, name):
        def guarded(*args, **kwargs):
            if sentinel in repr(args) + repr(kwargs):
                seen.append(name)
                raise AssertionError(f"stored data reached {name}")
            return function(*args, **kwargs)

        return guarded

    monkeypatch.setattr(hydra.utils, "instantiate", rig(hydra.utils.instantiate, "instantiate"))
    for name in ("resolve", "to_container", "create", "to_object", "merge"):
        monkeypatch.setattr(OmegaConf, name, staticmethod(rig(getattr(OmegaConf, name), name)))
    model = load_model(path)
    assert model.config["data"]["name"] == sentinel  # the stored data did load, as plain data
    for entry in ENTRIES:
        run_entry(entry, tmp_path, ckpt=path)
    assert seen == []
    assert (tmp_path / "out_eval" / "metrics.json").is_file() and (tmp_path / "out_export" / "m.onnx").is_file()


def test_a_run_folder_only_locates_its_checkpoint(trained, tmp_path, listener):
    """``run_dir=`` never reads ``.hydra/config.yaml``: a payload there (escaped or not) or a broken file changes
    nothing, and eval still scores what training validated."""
    marker = tmp_path / "pwned"
    run = tmp_path / "shared_run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(trained["last"].read_bytes())
    (run / ".hydra").mkdir()
    create = "${oc.create:{_target_: os.mkdir, path: '" + str(marker) + "'}}"
    payload = {"model": {"_target_": "os.mkdir", "path": str(marker), "x": "\\" + create}, "data": {"y": create}}
    OmegaConf.save(OmegaConf.create(payload), run / ".hydra" / "config.yaml")
    for entry in ENTRIES:
        run_entry(entry, tmp_path, run_dir=run)
    (run / ".hydra" / "config.yaml").write_text("model: [unclosed\n  - {")
    run_entry("eval", tmp_path, run_dir=run)
    assert not marker.exists() and listener.paths == []


def test_run_folder_links_are_not_followed_to_a_checkpoint(trained, tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "epoch_001.ckpt").symlink_to(tmp_path / "gone.ckpt")  # dangling
    (run / "checkpoints" / "last.ckpt").symlink_to(trained["last"])  # outside the run
    with pytest.raises(SegkitError, match=r"has no checkpoints/\*.ckpt file \(links are not followed") as err:
        load_model(run_dir=run)
    assert "\n" not in str(err.value)


def test_unregistered_targets_and_unknown_keys_are_refused(trained, tmp_path):
    marker = tmp_path / "pwned"
    cases = {
        "os.mkdir": ({"model": {"_target_": "os.mkdir", "path": str(marker)}}, "model._target_='os.mkdir' is not a"),
        "tv_any": (
            {"model": {"_target_": "torchvision.models.resnet18"}},
            "'torchvision.models.resnet18' is not a registered net",
        ),
        "module_path": (
            {"model": {"_target_": "segkit.models.nets.unet.os.mkdir", "path": str(marker)}},
            "unknown architecture 'segkit.models.nets.unet.os.mkdir'",
        ),
        "nested": ({"model.dropout": {"_target_": "os.mkdir", "path": str(marker)}}, "model.dropout._target_="),
        "kwarg": ({"model.path": str(marker)}, r"model.path is not an argument of UNet \(its arguments: "),
        "hydra_key": ({"model._partial_": True}, "model._partial_ is not allowed"),
        "data_target": ({"data.dataset._target_": "os.mkdir"}, "data.dataset._target_='os.mkdir' is not a segkit data"),
        "data_kwarg": ({"data.dataset.path": str(marker)}, "data.dataset.path is not an argument of SyntheticShapes"),
    }
    for name, (changes, expected) in cases.items():
        path = tmp_path / f"{name}.ckpt"
        torch.save(with_changes(trained["ckpt"], hyper_parameters=changes), path)
        with pytest.raises(SegkitError, match=expected) as err:
            run_entry("eval", tmp_path, ckpt=path)
        assert "\n" not in str(err.value), name
    torch.save(with_changes(trained["ckpt"], segkit={"input.labels.base": str(marker)}), tmp_path / "base.ckpt")
    with pytest.raises(SegkitError, match="segkit.input.labels.base is not allowed"):
        run_entry("eval", tmp_path, ckpt=tmp_path / "base.ckpt")  # a table file named by the checkpoint: not read
    assert not marker.exists()


def test_a_registered_user_net_loads_and_an_unregistered_one_is_refused(trained, tmp_path):
    from segkit.models.nets.unet import UNet

    class MyNet(UNet):
        pass

    ckpt = with_changes(trained["ckpt"], hyper_parameters={"model._target_": "mypkg.nets.MyNet"})
    torch.save(ckpt, tmp_path / "mine.ckpt")
    with pytest.raises(SegkitError, match=r"not a registered net .*segkit.register_net\(MyNet\)"):
        load_model(tmp_path / "mine.ckpt")
    segkit.register_net(MyNet, "mypkg.nets.MyNet")
    assert type(load_model(tmp_path / "mine.ckpt").net) is MyNet


def test_pickled_code_is_refused_everywhere(trained, tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "pickle.ckpt"
    torch.save(dict(trained["ckpt"], evil=Payload(marker)), path)
    for entry in ENTRIES:
        with pytest.raises(SegkitError, match="holds objects segkit will not unpickle"):
            run_entry(entry, tmp_path, ckpt=path)
    torch.save({"conv.weight": torch.zeros(1), "evil": Payload(marker)}, tmp_path / "weights.pth")
    with pytest.raises(SegkitError, match="cannot read weights file .*weights.pth"):
        load_state_dict_file(tmp_path / "weights.pth")
    assert not marker.exists()
    torch.load(path, weights_only=False)  # negative control: the payload is live
    assert marker.is_dir()


def test_hostile_weights_files_are_refused_through_model_weights_path(tmp_path):
    """``model.weights_path=`` (a whole torchvision segmentation model's weights) reads the file as untrusted."""
    marker = tmp_path / "pwned"
    torch.save({"conv.weight": torch.zeros(1), "evil": Payload(marker)}, tmp_path / "pickle.pth")
    torch.save({"w": torch.zeros(2**20, dtype=torch.uint8)}, tmp_path / "plain.pth")
    deflated(tmp_path / "plain.pth", tmp_path / "deflated.pth")
    expected = {"pickle.pth": "holds objects segkit will not unpickle", "deflated.pth": "holds a compressed record"}
    for name, message in expected.items():
        cfg = compose_config(
            "train",
            TINY + ["model=tv_lraspp_mobilenet_v3_large", f"model.weights_path={tmp_path / name}", "debug=fdr"],
            output_dir=tmp_path / "run",
        )
        with pytest.raises(SegkitError, match=message) as err:
            train(cfg)
        assert "\n" not in str(err.value) and name in str(err.value)
    assert not marker.exists()


def deflated(path: Path, out: Path) -> Path:
    """``path`` re-zipped with every record deflated: torch.load still reads it."""
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info.filename))
    return out


def test_compressed_records_are_refused_before_they_expand(tmp_path):
    bomb = tmp_path / "plain.pth"
    torch.save({"w": torch.zeros(64 * 2**20, dtype=torch.uint8)}, bomb)  # 64 MiB of zeros
    packed = deflated(bomb, tmp_path / "bomb.pth")
    bomb.unlink()
    ratio = sum(i.file_size for i in zipfile.ZipFile(packed).infolist()) / packed.stat().st_size
    assert ratio > 500  # a small file that expands several hundred times
    with pytest.raises(SegkitError, match="holds a compressed record") as err:
        read_torch_file(packed)
    assert "\n" not in str(err.value)
    with pytest.raises(SegkitError, match="compressed record"):
        load_state_dict_file(packed)
    # negative control: torch.load expands it, here under an address-space limit that a 64 MiB load exceeds
    script = f"""
import resource, torch
size = int(open('/proc/self/statm').read().split()[0]) * resource.getpagesize()
resource.setrlimit(resource.RLIMIT_AS, (size + 48 * 2**20, resource.RLIM_INFINITY))
try:
    torch.load({str(packed)!r}, weights_only=True)
except (MemoryError, RuntimeError) as err:
    print("expanded past the limit:", type(err).__name__)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert "expanded past the limit" in result.stdout, result.stdout + result.stderr[-1000:]


def test_a_record_larger_than_the_file_is_refused(trained, tmp_path):
    data = bytearray(trained["last"].read_bytes())
    with zipfile.ZipFile(trained["last"]) as archive:
        info = max(archive.infolist(), key=lambda i: i.file_size)
    # the central directory's uncompressed size of the largest record, set beyond the file
    offset = data.find(b"PK\x01\x02")
    while offset != -1:
        name_length = int.from_bytes(data[offset + 28 : offset + 30], "little")
        if data[offset + 46 : offset + 46 + name_length].decode() == info.filename:
            data[offset + 24 : offset + 28] = (len(data) * 4).to_bytes(4, "little")
            break
        offset = data.find(b"PK\x01\x02", offset + 4)
    assert offset != -1
    (tmp_path / "big.ckpt").write_bytes(bytes(data))
    with pytest.raises(SegkitError, match="record larger than the file|not a torch.save file"):
        read_torch_file(tmp_path / "big.ckpt")


def test_archives_are_checked_with_a_torch_reader_that_has_no_record_sizes(trained, monkeypatch):
    """torch 2.11's file reader has no get_record_size (a checkpoint load failed there on a GPU machine): offsets
    are compared alone, and the same file reads as with today's reader."""
    real = torch._C.PyTorchFileReader

    class OldReader:
        def __init__(self, path: str) -> None:
            self.reader = real(path)

        def get_all_records(self):
            return self.reader.get_all_records()

        def get_record_offset(self, name):
            return self.reader.get_record_offset(name)

    expected = read_torch_file(trained["last"])["state_dict"]
    monkeypatch.setattr(segkit.checkpoint_io, "_file_reader", OldReader)
    state = read_torch_file(trained["last"])["state_dict"]
    assert state.keys() == expected.keys() and all(torch.equal(state[k], expected[k]) for k in state)
    names = {
        name: (real(str(trained["last"])).get_record_offset(name), 7)
        for name in OldReader(str(trained["last"])).get_all_records()
    }
    assert torch_record_places(OldReader(str(trained["last"])), names) == names
    shifted = {name: (offset + 1, size) for name, (offset, size) in names.items()}
    assert torch_record_places(OldReader(str(trained["last"])), shifted) != shifted


def test_oversized_stored_nets_are_refused_before_allocation(trained, tmp_path):
    """A stored class count or width far beyond the stored tensors is refused on the meta device; the negative
    control counts what the same configs would have allocated."""
    from segkit.models.nets.unet import UNet

    too_many = [{"name": f"c{i}", "color": [0, 0, 0], "ids": []} for i in range(5000)]
    torch.save(with_changes(trained["ckpt"], segkit={"input.labels.classes": too_many}), tmp_path / "classes.ckpt")
    with pytest.raises(SegkitError, match=r"segkit.input.labels lists 5000 classes; at most 4096"):
        load_model(tmp_path / "classes.ckpt")
    torch.save(with_changes(trained["ckpt"], hyper_parameters={"model.base_width": 1024}), tmp_path / "wide.ckpt")
    with pytest.raises(SegkitError, match=r"does not fit its model config: .* other shapes"):
        load_model(tmp_path / "wide.ckpt")
    torch.save(with_changes(trained["ckpt"], hyper_parameters={"model.depth": 4000}), tmp_path / "deep.ckpt")
    with pytest.raises(SegkitError, match=r"builds more than \d+ layers for its weights|does not build"):
        load_model(tmp_path / "deep.ckpt")

    def meta_bytes(**options) -> int:
        with torch.device("meta"):
            net = UNet(**{"in_channels": 3, "depth": 2, "base_width": 4, "num_classes": 6, **options})
        return sum(p.numel() * p.element_size() for p in net.parameters())

    assert meta_bytes(num_classes=10**8) > 2**30 and meta_bytes(base_width=1024, depth=4) > 2**30


def test_malformed_records_are_one_line(trained, tmp_path):
    deep: dict = {}
    node = deep
    for _ in range(3000):
        node["x"] = {}
        node = node["x"]
    cases = {
        "deep": (with_changes(trained["ckpt"], hyper_parameters={"model.dropout": deep}), "nested deeper than 16"),
        "hp_list": (dict(trained["ckpt"], hyper_parameters=[1, 2]), "is not a segkit checkpoint"),
        "colors": (
            with_changes(trained["ckpt"], segkit={"input.labels.classes.0.color": "red"}),
            r"segkit.input.labels: label table 'synthetic'.*colou?r",
        ),
        "mean": (
            with_changes(trained["ckpt"], segkit={"input.mean": "0.5"}),
            "segkit.input.mean='0.5'; expected a list",
        ),
        "eval_size": (
            with_changes(trained["ckpt"], segkit={"input.eval_size": [12000, 12000]}),
            r"segkit.input.eval_size=\[12000, 12000\]; give \[height, width\]",
        ),
        "record": (dict(trained["ckpt"], segkit=[1]), "its 'segkit' record has no input spec"),
        "key": (with_changes(trained["ckpt"], hyper_parameters={"model": {1: 2}}), "has a key 1 that is not a string"),
        "nan": (with_changes(trained["ckpt"], hyper_parameters={"model.dropout": float("nan")}), "not a finite"),
        "value": (with_changes(trained["ckpt"], hyper_parameters={"model.depth": "two"}), "does not build"),
    }
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(20000)  # only to write the 3000-deep file
    try:
        for name, (content, _) in cases.items():
            torch.save(content, tmp_path / f"{name}.ckpt")
    finally:
        sys.setrecursionlimit(limit)
    for name, (_, expected) in cases.items():
        for entry in ENTRIES:
            with pytest.raises(SegkitError, match=expected) as err:
                run_entry(entry, tmp_path, ckpt=tmp_path / f"{name}.ckpt")
            assert "\n" not in str(err.value) and f"{name}.ckpt" in str(err.value), (name, entry, str(err.value))


def test_plain_data_accepts_what_segkit_stores(trained):
    assert (
        plain_data(trained["ckpt"]["hyper_parameters"], "test", "hyper_parameters")
        == (trained["ckpt"]["hyper_parameters"])
    )


def test_every_model_choice_rebuilds_through_the_registry_on_meta():
    """Every conf/model choice's resolved config maps onto a registered builder with checked keywords and
    builds on the meta device (what load_model does before it allocates)."""
    for model in sorted((ROOT / "conf" / "model").glob("*.yaml")):
        cfg = OmegaConf.to_container(compose_config("train", [f"model={model.stem}"]).model, resolve=True)
        builder, options = net_options(cfg, "test")
        options.update({k: False for k in ("pretrained", "pretrained_backbone") if k in options})
        options["num_classes"] = 5
        if not builder.__module__.startswith("torchvision."):
            options["in_channels"] = 3
        with torch.device("meta"):
            net = builder(**options)
        assert next(net.parameters()).is_meta, model.stem


# --- resume: the checkpoint's callback state and the run folder ---------------------------------------------------


def hostile_resume(trained: dict, run: Path, victims: dict[str, str], url: str) -> Path:
    """The trained run copied to ``run`` with a last.ckpt whose ModelCheckpoint state (no dirpath) names folders to
    delete and a remote best checkpoint with an unbeatable score."""
    import shutil

    shutil.copytree(trained["run"], run)
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    for state in ckpt["callbacks"].values():
        if "best_model_path" in state:
            state.pop("dirpath", None)
            state["last_model_path"] = victims["last"]
            state["kth_best_model_path"] = victims["kth"]
            state["best_k_models"] = {victims["kth"]: torch.tensor(5.0), victims["relative"]: torch.tensor(4.0)}
            state["best_model_path"] = f"{url}/best.ckpt"
            state["best_model_score"] = torch.tensor(1e9)
    torch.save(ckpt, run / "checkpoints" / "last.ckpt")
    return run / "checkpoints" / "last.ckpt"


def make_victims(tmp_path: Path) -> dict[str, Path]:
    victims = {name: tmp_path / f"victim_{name}" for name in ("last", "kth", "relative")}
    for folder in victims.values():
        folder.mkdir()
        (folder / "precious.txt").write_text("keep me")
    return victims


def test_resume_drops_callback_paths_outside_the_run(trained, tmp_path, listener, monkeypatch, caplog):
    victims = make_victims(tmp_path)
    monkeypatch.chdir(tmp_path)  # the relative path points at a victim from the working folder
    names = {"last": f"local://{victims['last']}", "kth": str(victims["kth"]), "relative": "victim_relative"}
    ckpt_path = hostile_resume(trained, tmp_path / "run", names, listener.url)
    cfg = compose_config(
        "train",
        TINY + ["debug=limit", "trainer.max_epochs=3", *SMALL_UNET, f"ckpt_path={ckpt_path}"],
        output_dir=tmp_path / "run",
    )
    with caplog.at_level(logging.WARNING, logger="segkit"):
        metrics = train(cfg)
    assert all((v / "precious.txt").read_text() == "keep me" for v in victims.values())
    assert listener.paths == []
    assert metrics["best/val/mIoU"] <= 1.0
    assert Path(metrics["best_model_path"]).parent == (tmp_path / "run" / "checkpoints").resolve()
    assert "test/mIoU" in metrics  # tested on this run's own best checkpoint
    warnings = [r.getMessage() for r in caplog.records if "outside the run's checkpoints folder" in r.getMessage()]
    assert len(warnings) == 1 and "\n" not in warnings[0]


def test_the_callback_payload_is_live_without_the_guard(trained, tmp_path, listener):
    """Negative control: Lightning's own ModelCheckpoint and checkpoint I/O act on the crafted state."""
    from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
    from pytorch_lightning.callbacks import ModelCheckpoint

    victims = make_victims(tmp_path)
    names = {"last": f"local://{victims['last']}", "kth": str(victims["kth"]), "relative": str(victims["relative"])}
    ckpt_path = hostile_resume(trained, tmp_path / "run", names, listener.url)
    state = next(s for s in torch.load(ckpt_path, weights_only=True)["callbacks"].values() if "best_model_path" in s)
    callback = ModelCheckpoint(dirpath=tmp_path / "run" / "checkpoints")
    callback.load_state_dict(dict(state))
    assert callback.best_model_score == 1e9 and callback.best_model_path.startswith("http://")
    TorchCheckpointIO().remove_checkpoint(callback.last_model_path)
    assert not victims["last"].exists()
    kept = sanitize_callback_state({"callbacks": {"cb": dict(state)}}, [tmp_path / "run" / "checkpoints"], "t")
    assert len(kept) == 5  # the guard drops every one of them


def test_checkpoint_io_removes_only_its_own_files(tmp_path, caplog):
    own = tmp_path / "checkpoints"
    own.mkdir()
    (own / "epoch_1.ckpt").write_bytes(b"x")
    victim = tmp_path / "victim"
    victim.mkdir()
    (own / "link.ckpt").symlink_to(victim)
    io_ = SegkitCheckpointIO([own])
    io_.remove_checkpoint(own / "epoch_1.ckpt")
    with caplog.at_level(logging.WARNING, logger="segkit"):
        io_.remove_checkpoint(victim)
        io_.remove_checkpoint(own / "link.ckpt")
    assert not (own / "epoch_1.ckpt").exists() and victim.is_dir() and (own / "link.ckpt").is_symlink()
    assert sum("kept" in r.getMessage() for r in caplog.records) == 2


@pytest.mark.parametrize(
    "link", ["train.log", "config_tree.yaml", "curves.png", ".hydra/config.yaml", "csv/hparams.yaml", "csv"]
)
def test_resume_refuses_a_run_folder_with_links(trained, tmp_path, capsys, link):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained["run"], run)
    victim = tmp_path / "bashrc"
    victim.write_text("precious\n")
    target = run / link
    if target.is_dir():
        shutil.rmtree(target)
    elif target.exists():
        target.unlink()
    target.parent.mkdir(parents=True, exist_ok=True)
    target.symlink_to(victim if link != "csv" else tmp_path)
    with pytest.raises(SystemExit) as stop:
        resume_in_place(["src/train.py", f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 1 and len(err) == 1 and f"symbolic link '{link}'" in err[0] and "cp -rL" in err[0]
    assert victim.read_text() == "precious\n"
    with pytest.raises(SystemExit):  # the same folder named explicitly
        resume_in_place(["src/train.py", f"hydra.run.dir={run}", "ckpt_path=x"])


def test_the_link_payload_is_live_without_the_guard(tmp_path):
    """Negative control: the log handler Hydra opens on train.log appends through a planted link."""
    victim = tmp_path / "bashrc"
    victim.write_text("precious\n")
    (tmp_path / "train.log").symlink_to(victim)
    handler = logging.FileHandler(tmp_path / "train.log")
    handler.emit(logging.makeLogRecord({"msg": "appended"}))
    handler.close()
    assert "appended" in victim.read_text()


def test_wandb_links_inside_the_run_are_allowed(tmp_path):
    (tmp_path / "wandb" / "run-1").mkdir(parents=True)
    (tmp_path / "wandb" / "latest-run").symlink_to(tmp_path / "wandb" / "run-1")
    check_run_folder(tmp_path)
    (tmp_path / "wandb" / "escape").symlink_to("/etc")
    with pytest.raises(SegkitError, match="symbolic link 'wandb/escape'"):
        check_run_folder(tmp_path)


def test_folder_names_reach_hydra_literally(trained, tmp_path, capsys):
    """A resumed folder's name is passed quoted, so commas, quotes and '=' reach Hydra as they are; a name holding
    ``${`` is refused, since Hydra resolves its output folder more than once and no escape survives every pass."""
    import shutil

    from hydra.core.override_parser.overrides_parser import OverridesParser

    run = tmp_path / 'run_a=b,c_"q"'
    shutil.copytree(trained["run"], run)
    argv = resume_in_place(["src/train.py", f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}"])
    value = OverridesParser.create().parse_override(argv[-1]).value()
    assert OmegaConf.create({"dir": value}).dir == str(run.resolve())
    hostile = tmp_path / "run_${oc.env:HOME}"
    shutil.copytree(trained["run"], hostile)
    with pytest.raises(SystemExit) as stop:
        resume_in_place(["src/train.py", f"ckpt_path={hostile / 'checkpoints' / 'last.ckpt'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 1 and len(err) == 1 and "has '$' in its path; rename it" in err[0]
    quoted = OverridesParser.create().parse_override("hydra.run.dir=" + hydra_quote(str(hostile))).value()
    escaped_once = OmegaConf.create({"dir": quoted}).dir
    assert OmegaConf.create({"dir": escaped_once}).dir != str(hostile)  # negative control: a second pass resolves it


def test_cli_refusals_are_one_line(trained, tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "pickle.ckpt"
    torch.save(dict(trained["ckpt"], evil=Payload(marker)), path)
    result = subprocess.run(
        [sys.executable, "src/eval.py", f"ckpt={path}", f"hydra.run.dir={tmp_path / 'eval'}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"},
    )
    errors = [line for line in (result.stdout + result.stderr).splitlines() if "error:" in line]
    assert result.returncode == 1 and len(errors) == 1 and str(path) in errors[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr and not marker.exists()


def test_garbage_and_foreign_files_are_one_line(tmp_path):
    (tmp_path / "garbage.ckpt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(SegkitError, match="garbage.ckpt' is not a torch.save file") as err:
        read_torch_file(tmp_path / "garbage.ckpt")
    assert "\n" not in str(err.value)
    buffer = io.BytesIO()
    torch.save([1, 2, 3], buffer)
    (tmp_path / "list.ckpt").write_bytes(buffer.getvalue())
    with pytest.raises(SegkitError, match="holds a list, not a segkit checkpoint"):
        load_model(tmp_path / "list.ckpt")


# --- archives and tensors crafted so that what is checked differs from what is loaded --------------------------


def two_directories(tmp_path: Path, size: int) -> Path:
    """A zip whose central directory seen by Python (after a pad record) lists every record stored, while the
    directory torch's reader finds at the stated offset lists the big record as deflated to ``size`` bytes."""
    import struct
    import zlib

    plain = io.BytesIO()
    torch.save({"w": torch.zeros(size, dtype=torch.uint8)}, plain)
    source = zipfile.ZipFile(plain)
    records = {name: source.read(name) for name in source.namelist()}
    big = max(records, key=lambda n: len(records[n]))
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    packed = packer.compress(records[big]) + packer.flush()

    def local(name: bytes, data: bytes, crc: int) -> bytes:
        return struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, 0, 0, 0, 0, crc, len(data), len(data), len(name), 0) + (
            name + data
        )

    def central(name: bytes, method: int, crc: int, stored: int, full: int, offset: int) -> bytes:
        head = struct.pack("<4sHHHHHHIII", b"PK\x01\x02", 20, 20, 0, method, 0, 0, crc, stored, full)
        return head + struct.pack("<HHHHHII", len(name), 0, 0, 0, 0, 0, offset) + name

    directory_size = sum(46 + len(n.encode()) for n in records)
    body = local(b"pad", b"\0" * directory_size, zlib.crc32(b"\0" * directory_size))
    torch_view, python_view = b"", b""
    for name, data in records.items():
        crc, offset = zlib.crc32(data), len(body)
        if name == big:
            body += local(name.encode(), packed, crc)
            torch_view += central(name.encode(), 8, crc, len(packed), len(data), offset)
            python_view += central(name.encode(), 0, crc, len(packed), len(packed), offset - directory_size)
        else:
            body += local(name.encode(), data, crc)
            torch_view += central(name.encode(), 0, crc, len(data), len(data), offset)
            python_view += central(name.encode(), 0, crc, len(data), len(data), offset - directory_size)
    count = len(records)
    end = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, count, count, directory_size, len(body), 0)
    out = tmp_path / "two_directories.pth"
    out.write_bytes(body + torch_view + python_view + end)
    return out


def test_a_second_zip_directory_cannot_hide_a_deflated_record(tmp_path):
    path = two_directories(tmp_path, 32 * 2**20)
    assert all(i.compress_type == zipfile.ZIP_STORED for i in zipfile.ZipFile(path).infolist())  # Python's view
    with pytest.raises(SegkitError, match="data between or before its zip directories") as err:
        read_torch_file(path)
    assert "\n" not in str(err.value)
    loaded = torch.load(path, weights_only=True)  # negative control: torch's view expands it
    assert loaded["w"].numel() == 32 * 2**20 and path.stat().st_size < loaded["w"].numel() / 50


def test_broadcast_views_are_refused_before_anything_copies_them(trained, tmp_path):
    wide = {
        k: torch.zeros(1, dtype=v.dtype).expand(v.shape) if v.ndim else v
        for k, v in trained["ckpt"]["state_dict"].items()
    }
    torch.save(dict(trained["ckpt"], state_dict=wide), tmp_path / "views.ckpt")
    strided = {"w": torch.zeros(1).as_strided((50_000, 50_000), (0, 0))}
    torch.save(strided, tmp_path / "strided.pth")
    for entry in ENTRIES:
        with pytest.raises(SegkitError, match=r"holds a tensor of shape .* \(a broadcast view\)"):
            run_entry(entry, tmp_path, ckpt=tmp_path / "views.ckpt")
    with pytest.raises(SegkitError, match="broadcast view"):
        load_state_dict_file(tmp_path / "strided.pth")
    shown = torch.load(tmp_path / "strided.pth", weights_only=True)["w"]  # negative control: 4 bytes stored...
    assert shown.untyped_storage().nbytes() == 4 and shown.numel() * 4 == 10**10  # ...10 GB shown


def test_stored_data_sizes_are_bounded(trained, tmp_path):
    cases = {
        "height": ({"data.dataset.height": 30000}, "data.dataset.height=30000; use a whole number from 1 to 8192"),
        "samples": ({"data.dataset.num_samples.val": 10**9}, "num_samples: 1000000000 for 'val'; use 0 to 100000"),
        "objects": ({"data.dataset.max_objects": 10**6}, "data.dataset.max_objects=1000000"),
    }
    for name, (changes, expected) in cases.items():
        torch.save(with_changes(trained["ckpt"], hyper_parameters=changes), tmp_path / f"{name}.ckpt")
        with pytest.raises(SegkitError, match=expected) as err:
            run_entry("eval", tmp_path, ckpt=tmp_path / f"{name}.ckpt")
        assert "\n" not in str(err.value), name


def test_source_ids_must_be_ids(trained, tmp_path):
    for name, ids in {"huge": [10**30], "text": ["1"], "negative": [-1]}.items():
        torch.save(with_changes(trained["ckpt"], segkit={"input.labels.classes.1.ids": ids}), tmp_path / f"{name}.ckpt")
        with pytest.raises(SegkitError, match="segkit.input.labels.classes ids must be lists of ids from 0 to 65535"):
            load_model(tmp_path / f"{name}.ckpt")


def resume_cfg(tmp_path: Path, ckpt: Path):
    return compose_config(
        "train", TINY + ["debug=limit", "trainer.max_epochs=3", *SMALL_UNET, f"ckpt_path={ckpt}"], output_dir=tmp_path
    )


def test_resume_refuses_hostile_loop_and_callback_state(trained, tmp_path):
    import copy

    base = trained["ckpt"]
    migrate = {k: v for k, v in copy.deepcopy(base).items() if k != "callbacks"}
    migrate.update({"pytorch-lightning_version": "0.9.0", "checkpoint_callback_best_model_path": "/etc/x.ckpt"})
    negative = copy.deepcopy(base)
    negative["loops"]["fit_loop"]["epoch_progress"]["current"]["completed"] = -(10**6)
    timer = copy.deepcopy(base)
    timer["callbacks"]["Timer"] = {"time_elapsed": {"train": -(10**6), "sanity_check": 0.0}}
    wrong = copy.deepcopy(base)
    wrong["state_dict"] = {k: v[:1] if v.ndim else v for k, v in wrong["state_dict"].items()}
    rng = copy.deepcopy(base)
    rng["rng_states"] = {"torch": "x", "numpy": 1, "python": 2}
    cases = {
        "migrate": (migrate, r"was written by Lightning '0.9.0'; segkit resumes checkpoints of Lightning 2"),
        "negative": (negative, r"loops.fit_loop.epoch_progress.current.completed=-1000000; a loop counter below zero"),
        "timer": (timer, r"callbacks\['Timer'\].time_elapsed must hold seconds from 0"),
        "wrong": (wrong, r"does not fit its model config: .* other shapes"),
        "rng": (rng, r"rng_states are malformed"),
    }
    for name, (content, expected) in cases.items():
        torch.save(content, tmp_path / f"{name}.ckpt")
        with pytest.raises(SegkitError, match=expected) as err:
            train(resume_cfg(tmp_path / f"run_{name}", tmp_path / f"{name}.ckpt"))
        assert "\n" not in str(err.value), name
    # negative control: Lightning's own migration turns the old top-level key into a callback path
    from pytorch_lightning.utilities.migration.migration import _migrate_model_checkpoint_early_stopping

    migrated = _migrate_model_checkpoint_early_stopping(copy.deepcopy(migrate))
    assert any(s.get("best_model_path") == "/etc/x.ckpt" for s in migrated["callbacks"].values())


def test_a_link_planted_during_the_run_is_not_written_through(trained, tmp_path):
    from segkit.callbacks.curves import plot_curves
    from segkit.loggers import ResumableCSVLogger

    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (tmp_path / "curves.png").symlink_to(victim)
    plot_curves(trained["run"] / "csv" / "metrics.csv", tmp_path / "curves.png")
    assert victim.read_text() == "precious\n" and not (tmp_path / "curves.png").is_symlink()
    logger = ResumableCSVLogger(save_dir=str(tmp_path), name="csv", version="")
    logger.log_metrics({"x": 1.0}, step=0)
    metrics = Path(logger.experiment.metrics_file_path)
    metrics.unlink(missing_ok=True)
    metrics.symlink_to(victim)
    logger.log_metrics({"x": 2.0}, step=1)
    with pytest.raises(SegkitError, match="became a symbolic link during the run"):
        logger.save()
    assert victim.read_text() == "precious\n"


def test_a_legacy_weights_file_is_refused_with_the_command_that_converts_it(tmp_path):
    """torchvision's oldest weights files (VGG, DenseNet) are in torch's legacy format: refused in one line that
    gives the conversion, and the converted file loads."""
    legacy = tmp_path / "vgg16-397923af.pth"
    torch.save({"features.0.weight": torch.ones(2, 3)}, legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(SegkitError, match="legacy \\(pre-1.6\\) format") as err:
        load_state_dict_file(legacy)
    message = str(err.value)
    assert "\n" not in message
    command = message.split('python -c "', 1)[1].split('"', 1)[0]
    subprocess.run([sys.executable, "-c", command], check=True, timeout=120)
    assert load_state_dict_file(legacy.with_suffix(".pt"))["features.0.weight"].sum() == 6


def test_a_planted_best_checkpoint_inside_the_run_is_not_trusted(tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    for name in ("epoch_002.ckpt", "planted.ckpt"):
        (folder / name).write_bytes(b"x")
    own = str(folder / "epoch_002.ckpt")
    honest = {"best_model_path": own, "best_model_score": torch.tensor(0.5), "best_k_models": {own: torch.tensor(0.5)}}
    state = {"cb": dict(honest)}
    assert sanitize_callback_state({"callbacks": state}, [folder], "t") == [] and state["cb"]["best_model_path"] == own
    planted = {**honest, "best_model_path": str(folder / "planted.ckpt"), "best_model_score": torch.tensor(1e9)}
    state = {"cb": planted}
    assert len(sanitize_callback_state({"callbacks": state}, [folder], "t")) == 1
    assert state["cb"]["best_model_path"] == "" and state["cb"]["best_model_score"] is None


def test_eval_on_a_run_trained_with_a_table_file_uses_the_stored_table(tmp_path):
    """A run trained with data.labels=<file> (extending a shipped table through base) stores the expanded table, so
    eval on the checkpoint alone rebuilds its data with no table file and follows no path."""
    table = tmp_path / "mine.yaml"
    table.write_text("base: synthetic\nname: mine\nunknown: ignore\n")
    run = tmp_path / "run"
    cfg = compose_config(
        "train", TINY + ["debug=limit", "test=false", *SMALL_UNET, f"data.labels={table}"], output_dir=run
    )
    metrics = train(cfg)
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    labels = ckpt["segkit"]["input"]["labels"]
    assert isinstance(labels, dict) and "base" not in labels and labels["unknown"] == "ignore"
    assert ckpt["hyper_parameters"]["data"]["labels"] == str(table)  # the run config names it; the spec holds it
    table.unlink()  # nothing may read it any more
    run_entry("eval", tmp_path, ckpt=run / "checkpoints" / "last.ckpt")
    report = __import__("json").loads((tmp_path / "out_eval" / "metrics.json").read_text())
    assert "ring" in report["IoU"] and report["mIoU"] == pytest.approx(metrics["val/mIoU"], abs=1e-6)
