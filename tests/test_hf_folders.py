"""Hugging Face folders (estimators.loading.load_hf_folder): GPT-2, Llama, Qwen2 and GPT-NeoX
folders built here with `transformers` config classes (random weights, `save_pretrained`, a
word-level tokenizer built offline) load as real HookedTransformers whose logits are the HF
model's, pass the activation engine's conformance check and propagate a point mass exactly;
the ../shared/cases/hf-bridge folder (no tokenizer) works with token ids in `propagate` and
`scrub`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import transformers as T

from estimators import conformance
from estimators.cli import main
from estimators.loading import LoadError, load_hf_folder, load_model, require_tokenizer
from tests.activation.test_conformance import assert_point_mass_exact, point_mass_tokens

CASE = Path(__file__).resolve().parents[1] / ".." / "shared" / "cases" / "hf-bridge"

WORDS = ["<unk>", "<s>", "</s>", "<pad>"] + \
    "the a cat dog sat on mat ran fast and slow big small red blue".split()
VOCAB = 40
_SMALL = dict(num_hidden_layers=2, hidden_size=16, num_attention_heads=4, intermediate_size=32,
              max_position_embeddings=16, vocab_size=VOCAB)
ARCHS = {  # name → (config class, fields): tiny versions of each family's real layout
    "gpt2": (T.GPT2Config, dict(n_layer=2, n_embd=16, n_head=2, n_inner=48, n_positions=16,
                                vocab_size=VOCAB, bos_token_id=1, eos_token_id=2)),
    "llama": (T.LlamaConfig, dict(_SMALL, num_key_value_heads=2)),  # GQA, RMS, rotary, SwiGLU
    "qwen2": (T.Qwen2Config, dict(_SMALL, num_key_value_heads=2)),  # + QKV biases
    "gpt_neox": (T.GPTNeoXConfig, dict(_SMALL, rotary_pct=0.5)),  # parallel attn+MLP, rotary
}


def word_tokenizer():
    """A word-level fast tokenizer over WORDS, built offline with `tokenizers`."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return T.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                     eos_token="</s>", pad_token="<pad>")


def build_hf_folder(arch: str, folder: Path, dtype=torch.float32, tokenizer: bool = True):
    """Save a random-weight HF causal LM of `arch` (and its tokenizer) to `folder`; returns the
    HF model (eval mode) for reference."""
    cls, fields = ARCHS[arch]
    torch.manual_seed(0)
    hf = T.AutoModelForCausalLM.from_config(cls(**fields)).to(dtype).eval()
    hf.save_pretrained(folder)
    if tokenizer:
        word_tokenizer().save_pretrained(folder)
    return hf


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    out = {}
    for arch in ARCHS:
        for dtype in (torch.float32, torch.bfloat16):
            name = f"{arch}-{str(dtype).removeprefix('torch.')}"
            out[name] = (root / name, build_hf_folder(arch, root / name, dtype))
    return out


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("arch", list(ARCHS))
def test_hf_folder_converts_passes_the_check_and_propagates_a_point_mass(folders, arch, dtype):
    from transformer_lens import HookedTransformer

    folder, hf = folders[f"{arch}-{dtype}"]
    lm = load_model(str(folder))
    model = lm.model
    assert lm.kind == "hf-folder" and isinstance(model, HookedTransformer)
    assert lm.card["architecture"] == hf.config.architectures[0]
    assert str(model.cfg.dtype) == f"torch.{dtype}"
    # the model's own numbers: logits equal the HF model's (unprocessed weights)
    tokens = torch.randint(0, VOCAB, (3, 7), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours, ref = model(tokens).double(), hf(tokens).logits.double()
    tol = conformance.tolerance_for(model.cfg.dtype, float(ref.abs().max()))
    assert float((ours - ref).abs().max()) <= tol
    assert lm.card["max_logit_error_vs_hugging_face"] <= tol
    v = conformance.verdict(model, "activation")
    assert v.ok, v.line()
    assert_point_mass_exact(model, point_mass_tokens(model))
    # the folder's tokenizer, as transformers loads it (Qwen2 folders get transformers' own
    # Qwen2Tokenizer class), is attached: text works
    ids = T.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)("the cat sat")
    assert model.to_tokens("the cat sat", prepend_bos=False).tolist() == [ids.input_ids]
    if arch != "qwen2":
        assert ids.input_ids == [4, 6, 8]


def test_gpt2_mlp_width_follows_n_inner(folders):
    """TransformerLens' GPT-2 config conversion assumes d_mlp = 4·n_embd; n_inner wins."""
    lm = load_model(str(folders["gpt2-float32"][0]))
    assert lm.model.cfg.d_mlp == 48


def test_folder_whose_path_names_an_architecture(tmp_path):
    """TransformerLens picks Llama/Gemma configs by *name*: a folder called llama-… must still
    be converted from its own config."""
    hf = build_hf_folder("qwen2", tmp_path / "my-llama-copy", tokenizer=False)
    lm = load_model(str(tmp_path / "my-llama-copy"))
    assert lm.card["architecture"] == "Qwen2ForCausalLM"
    assert lm.model.cfg.n_key_value_heads == hf.config.num_key_value_heads


def test_case_folder_without_tokenizer_works_with_token_ids(tmp_path, capsys):
    """../shared/cases/hf-bridge: propagate of a point mass is exact at every site; text gets
    one clear line."""
    lm = load_model(str(CASE / "model"))
    assert "none in the folder" in lm.card["tokenizer"]
    with pytest.raises(LoadError, match="needs a tokenizer.*token ids"):
        require_tokenizer(lm.model, "text")
    assert conformance.verdict(lm.model, "activation").ok
    rc = main(["propagate", "--model", str(CASE / "model"), "--tokens",
               str(CASE / "tokens_same.json"), "--mask", "full", "--samples", "16", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert [s["name"] for s in out["sites"]] == [
        "blocks.0.hook_resid_pre", "blocks.0.hook_resid_post", "blocks.1.hook_resid_post",
        "logits@-1"]
    assert all(s["mean_error"] <= 1e-6 for s in out["sites"])
    est = torch.tensor(out["output"]["estimate_mean"])
    emp = torch.tensor(out["output"]["empirical_mean"])
    assert float((est - emp).abs().max()) <= conformance.tolerance_for(torch.float32)


def test_case_scrub_all_important_reproduces_the_loss(capsys):
    rc = main(["scrub", "--model", str(CASE / "model"), "--partition",
               str(CASE / "all_important.json"), "--data", str(CASE / "data8.json"), "--json"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    out = json.loads(captured.out)
    assert abs(out["loss_scrubbed"] - out["loss_original"]) <= 1e-6


def test_bridge_models_are_refused_by_the_activation_engine(folders):
    """An architecture TransformerLens cannot convert boots through TransformerBridge; the
    activation engine refuses it in one line."""
    from estimators.loading import _boot_bridge

    bridge = _boot_bridge(folders["gpt2-float32"][0], torch.device("cpu"))
    line = conformance.verdict(bridge, "activation").line()
    assert "\n" not in line and "needs a TransformerLens HookedTransformer" in line


def test_unloadable_folder_is_one_load_error(tmp_path):
    folder = tmp_path / "broken"
    shutil.copytree(CASE / "model", folder)
    (folder / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(LoadError, match="could not load the Hugging Face model folder"):
        load_hf_folder(folder)
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(LoadError, match="never loaded"):  # no pickle is ever unpickled
        load_model(str(folder))


def test_pages_run_on_the_case_folder():
    """Model, Activation model and Circuits pages on the hf-bridge folder: no exception; the
    Activation page on the user's point-mass token list shows the library's surprise."""
    from estimators.activation import Propagator, transformer_chain
    from tests.app.conftest import assert_no_exception, open_page
    from tests.app.test_activation_page import assert_surprise

    model = str((CASE / "model").resolve())
    for page in ("model.py", "circuits.py"):
        assert_no_exception(open_page(page, query={"model": model}))
    at = open_page("activation.py", query={"model": model})
    assert_no_exception(at)
    assert not at.error, [e.value for e in at.error]
    rows = json.loads((CASE / "tokens_same.json").read_text())
    at.text_area(key="_act_tokens").set_value("\n".join(" ".join(map(str, r)) for r in rows))
    at.multiselect(key="_act_positions").set_value(list(range(8)))
    at.number_input(key="_act_k").set_value(16)
    at.button[[b.label for b in at.button].index("Apply")].click().run()
    assert_no_exception(at)
    assert not at.error, [e.value for e in at.error]
    lm = load_model(model)
    chain = transformer_chain(lm.model, torch.tensor(rows), positions=list(range(8)),
                              samples=16, seed=0, logits_position=-1)
    assert_surprise(at, Propagator(chain).run())


def test_left_padding_tokenizer_never_masks_token_ids(tmp_path):
    """A folder whose tokenizer pads on the left (common for Llama) would make TransformerLens
    mask every pad-token id in a token input; the loader pads on the right, so a sequence that
    contains the pad id gets the HF model's own logits."""
    folder = tmp_path / "llama-left"
    hf = build_hf_folder("llama", folder, tokenizer=False)
    tok = word_tokenizer()
    tok.padding_side = "left"
    tok.save_pretrained(folder)
    lm = load_model(str(folder))
    assert lm.model.tokenizer.padding_side == "right"
    pad = lm.model.tokenizer.pad_token_id
    tokens = torch.tensor([[pad, 5, pad, 7, 9]])
    with torch.no_grad():
        torch.testing.assert_close(lm.model(tokens), hf(tokens).logits, atol=1e-4, rtol=1e-4)
