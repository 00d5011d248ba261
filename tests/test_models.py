import pytest

from mathtune.errors import UserError
from mathtune.models import load_model, resolve_model


def test_alias_resolves_to_cached_safetensors(smollm2_dir):
    r = resolve_model("smollm2-135m")
    assert r.kind == "alias"
    assert (smollm2_dir / "config.json").is_file()
    assert list(smollm2_dir.glob("*.safetensors"))
    assert r.hub_id == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_local_dir(tiny_model_dir):
    model, tok, r = load_model(str(tiny_model_dir), dtype="fp32", device="cpu")
    assert r.kind == "local"
    assert tok.pad_token is not None
    assert model.config.num_hidden_layers == 2


@pytest.mark.parametrize(
    "spec, msg",
    [
        ("./nope", "unknown model spec"),
        ("not a model", "unknown model spec"),
        ("missing.gguf", "GGUF file not found"),
    ],
)
def test_bad_specs(spec, msg):
    with pytest.raises(UserError, match=msg):
        resolve_model(spec)


def test_dir_without_config(tmp_path):
    with pytest.raises(UserError, match="no config.json"):
        resolve_model(str(tmp_path))


def test_hub_id_offline_gives_one_line():
    with pytest.raises(UserError, match="pass a local directory or .gguf file"):
        load_model("someorg/some-model-that-does-not-exist", device="cpu")


def test_adapter_dir_must_be_an_adapter(tiny_model_dir, tmp_path):
    with pytest.raises(UserError, match="not a LoRA adapter directory"):
        load_model(str(tiny_model_dir), device="cpu", adapter=tmp_path)
