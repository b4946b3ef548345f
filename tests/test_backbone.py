"""The CLIP backbone: JSON model configs, every way of giving weights, QuickGELU, fast failures."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from open_clip.transformer import QuickGELU

from clipdebias.clip.backbone import BackboneConfig, load_backbone, register_model
from clipdebias.utils.errors import UserError

REPO = Path(__file__).resolve().parents[1]


def _activation(backbone):
    return type(backbone.model.visual.transformer.resblocks[0].mlp.gelu)


def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture
def random_tiny(tiny_clip):
    return load_backbone(BackboneConfig(model=tiny_clip, pretrained="none"))


def test_json_config_random_weights_are_seeded_and_embeddings_normalised(random_tiny, tiny_clip):
    assert random_tiny.name == "tiny-clip" and random_tiny.random_weights and random_tiny.embed_dim == 32
    again = load_backbone(BackboneConfig(model=tiny_clip, pretrained="none"))
    assert _same_weights(random_tiny.model, again.model)
    images = random_tiny.encode_images(torch.randn(3, 3, 32, 32))
    texts = random_tiny.encode_texts(["a photo of a cat", "a photo of a dog"])
    assert images.shape == (3, 32) and texts.shape == (2, 32) and images.dtype == torch.float32
    assert torch.allclose(images.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert random_tiny.cache_identity["weights"] == "random-seed-0"
    assert _activation(random_tiny) is torch.nn.GELU


def test_local_checkpoint_file_loads_exactly_and_is_keyed_by_content(random_tiny, tiny_clip, tmp_path):
    first = tmp_path / "tiny.pt"
    torch.save(random_tiny.model.state_dict(), first)
    loaded = load_backbone(BackboneConfig(model=tiny_clip, pretrained=str(first)), digest_dir=tmp_path / "memo")
    assert _same_weights(loaded.model, random_tiny.model) and not loaded.random_weights
    assert loaded.cache_identity["weights"].startswith("sha256:")
    with torch.no_grad():
        for p in random_tiny.model.parameters():
            p.add_(0.5)
    second = tmp_path / "tiny2.pt"
    torch.save(random_tiny.model.state_dict(), second)
    other = load_backbone(BackboneConfig(model=tiny_clip, pretrained=str(second)), digest_dir=tmp_path / "memo")
    assert other.cache_identity["weights"] != loaded.cache_identity["weights"]
    assert (tmp_path / "memo" / "digests.json").is_file()


def test_openai_weights_get_quick_gelu_from_a_file_name_and_can_be_overridden(random_tiny, tiny_clip, tmp_path):
    path = tmp_path / "openai-tiny.pt"
    torch.save(random_tiny.model.state_dict(), path)
    openai = load_backbone(BackboneConfig(model=tiny_clip, pretrained=str(path)))
    assert openai.quick_gelu and _activation(openai) is QuickGELU
    forced = load_backbone(BackboneConfig(model=tiny_clip, pretrained=str(path), quick_gelu=False))
    assert not forced.quick_gelu and _activation(forced) is torch.nn.GELU
    assert forced.cache_identity["model_config"] != openai.cache_identity["model_config"]


def _torchscript_archive(state_dict: dict, path: Path) -> None:
    """A TorchScript file holding ``state_dict`` plus OpenAI's extra keys, like OpenAI's ``ViT-B-32.pt``."""
    root = torch.nn.Module()
    for key, value in {**state_dict, "input_resolution": torch.tensor(32)}.items():
        node = root
        *parents, leaf = key.split(".")
        for name in parents:
            if not hasattr(node, name):
                node.add_module(name, torch.nn.Module())
            node = getattr(node, name)
        node.register_buffer(leaf, value.clone())
    torch.jit.save(torch.jit.script(root), str(path))


def test_openai_torchscript_archive_loads_with_quick_gelu(random_tiny, tiny_clip, tmp_path):
    path = tmp_path / "weights.pt"  # nothing in the name says OpenAI: the format does
    _torchscript_archive(random_tiny.model.state_dict(), path)
    loaded = load_backbone(BackboneConfig(model=tiny_clip, pretrained=str(path)))
    assert loaded.weights.torchscript and _activation(loaded) is QuickGELU
    assert _same_weights(loaded.model, random_tiny.model)


def _fake_hub_repo(hub: Path, repo_id: str, files: dict[str, object]) -> None:
    folder = hub / ("models--" + repo_id.replace("/", "--"))
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("0123abcd")
    snapshot = folder / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    for name, content in files.items():
        if isinstance(content, dict) and name.endswith(".json"):
            (snapshot / name).write_text(json.dumps(content))
        else:
            torch.save(content, snapshot / name)


def test_tag_is_found_in_the_hub_cache_with_its_quick_gelu_and_preprocessing(
    random_tiny, tiny_clip, tmp_path, monkeypatch
):
    import open_clip
    from huggingface_hub import constants

    hub = tmp_path / "hub"
    _fake_hub_repo(hub, "someone/tiny-weights", {"open_clip_pytorch_model.bin": random_tiny.model.state_dict()})
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))
    register_model(tiny_clip)
    tags = {
        "qg": {
            "hf_hub": "someone/tiny-weights/",
            "quick_gelu": True,
            "mean": (0.5, 0.5, 0.5),
            "std": (0.25, 0.25, 0.25),
        },
        "plain": {"hf_hub": "someone/tiny-weights/"},
    }
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, "tiny-clip", tags)
    tagged = load_backbone(BackboneConfig(model=tiny_clip, pretrained="qg"))
    assert tagged.weights.source == "tag" and _same_weights(tagged.model, random_tiny.model)
    assert _activation(tagged) is QuickGELU
    assert tuple(tagged.preprocess_cfg["mean"]) == (0.5, 0.5, 0.5) and tuple(tagged.preprocess_cfg["std"]) == (
        0.25,
        0.25,
        0.25,
    )
    assert tagged.transform_id != random_tiny.transform_id
    assert _activation(load_backbone(BackboneConfig(model=tiny_clip, pretrained="plain"))) is torch.nn.GELU


def test_hub_and_local_dir_folders_bring_their_own_config(random_tiny, tiny_clip, tmp_path, monkeypatch):
    from huggingface_hub import constants

    model_cfg = json.loads(Path(tiny_clip).read_text())
    folder = tmp_path / "exported"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg}))
    torch.save(random_tiny.model.state_dict(), folder / "open_clip_pytorch_model.bin")
    local = load_backbone(BackboneConfig(model="ViT-B-32", pretrained=f"local-dir:{folder}"))
    assert local.embed_dim == 32 and _same_weights(local.model, random_tiny.model)

    hub = tmp_path / "hub"
    openai_cfg = {"model_cfg": model_cfg}
    _fake_hub_repo(
        hub,
        "someone/tiny.openai",
        {"open_clip_config.json": openai_cfg, "open_clip_pytorch_model.bin": random_tiny.model.state_dict()},
    )
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))
    from_hub = load_backbone(BackboneConfig(model="ViT-B-32", pretrained="hf-hub:someone/tiny.openai"))
    assert _same_weights(from_hub.model, random_tiny.model) and _activation(from_hub) is QuickGELU


@pytest.mark.parametrize(
    "model, pretrained, message",
    [
        ("ViT-B-3", "none", "did you mean ViT-B-32"),
        ("missing.json", "none", "no such model config file"),
        ("ViT-B-32", "no-such-tag", "is not a weights tag of ViT-B-32"),
        ("ViT-B-32", "/no/such/weights.bin", "no such file"),
        ("ViT-B-32", "laion2b_s34b_b79k", "laion/CLIP-ViT-B-32-laion2B-s34B-b79K"),
        ("ViT-B-32", "hf-hub:someone/absent", "someone/absent/open_clip_config.json"),
        ("ViT-B-32", "local-dir:/no/such/dir", "is not a directory"),
    ],
)
def test_unavailable_models_and_weights_are_one_line_user_errors(model, pretrained, message, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    with pytest.raises(UserError) as caught:
        load_backbone(BackboneConfig(model=model, pretrained=pretrained))
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_a_weights_file_for_another_architecture_is_a_user_error(random_tiny, tmp_path):
    path = tmp_path / "tiny.pt"
    torch.save(random_tiny.model.state_dict(), path)
    with pytest.raises(UserError, match="cannot build --model RN50"):
        load_backbone(BackboneConfig(model="RN50", pretrained=str(path)))


def test_missing_weights_fail_in_seconds_even_without_hf_hub_offline(tmp_path):
    """No HF_HUB_OFFLINE, and a Hub endpoint that accepts connections but never answers."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    env = {key: value for key, value in os.environ.items() if key not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(
        HF_ENDPOINT=f"http://127.0.0.1:{silent.getsockname()[1]}",
        HF_HOME=str(tmp_path / "hf"),
        HOME=str(tmp_path),
        CLIPDEBIAS_NETWORK_TIMEOUT="1",
        PYTHONPATH=str(REPO),
    )
    command = [sys.executable, "-m", "clipdebias", "encode", "--dataset", "digits", "--model", "ViT-B-32"]
    began = time.monotonic()
    try:
        done = subprocess.run(
            [*command, "--pretrained", "laion2b_s34b_b79k", "--cache-dir", str(tmp_path / "c")],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        silent.close()
    elapsed = time.monotonic() - began
    assert done.returncode == 2, done.stderr
    assert elapsed < 15
    error = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "Traceback" not in done.stderr
    assert (
        "laion/CLIP-ViT-B-32-laion2B-s34B-b79K" in error[0]
        and "cannot be reached" in error[0]
        and "HF_HOME" in error[0]
    )


def test_hf_hub_offline_names_the_flag(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    began = time.monotonic()
    with pytest.raises(UserError, match="HF_HUB_OFFLINE is set") as caught:
        load_backbone(BackboneConfig(model="ViT-B-32", pretrained="openai"))
    assert time.monotonic() - began < 5
    assert "timm/vit_base_patch32_clip_224.openai" in str(caught.value) and "ViT-B-32.pt" in str(caught.value)


def test_low_precision_still_gives_float32_unit_embeddings_and_its_own_key(random_tiny, tiny_clip):
    half = load_backbone(BackboneConfig(model=tiny_clip, pretrained="none", precision="bf16"))
    assert half.input_dtype == torch.bfloat16
    images = half.encode_images(torch.randn(2, 3, 32, 32))
    assert images.dtype == torch.float32 and torch.allclose(images.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert half.cache_identity["precision"] == "bf16" and half.cache_identity != random_tiny.cache_identity
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        load_backbone(BackboneConfig(model=tiny_clip, pretrained="none", precision="fp8"))
