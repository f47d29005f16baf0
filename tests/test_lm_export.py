"""Export round trip: transformers' native HrmTextForCausalLM is an independent oracle for our forward pass."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hrm.lm.data import TOKENIZER_INFO, train_tokenizer
from hrm.lm.export import export_hf, l_bp_cycles
from hrm.lm.model import build_lm, lm_config
from hrm.lm.packing import pack

transformers = pytest.importorskip("transformers")
pytest.importorskip("transformers.models.hrm_text")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    texts = [f"the number {i} is {'even' if i % 2 == 0 else 'odd'} and {i * 7} follows" for i in range(300)]
    tok_dir = root / "tok"
    train_tokenizer(iter(texts), 512, tok_dir)
    torch.manual_seed(0)
    cfg = lm_config("tiny", 512, attn_backend="sdpa", max_seq_len=256)
    model = build_lm(cfg).eval()
    out = root / "hf"
    export_hf(model, cfg, out, tok_dir, TOKENIZER_INFO, dtype=torch.float32)
    return model, cfg, out


def test_config_fixes_layer_count_and_bp_key(exported):
    model, cfg, out = exported
    conf = json.loads((out / "config.json").read_text())
    assert conf["num_layers_per_stack"] == cfg.n_layers // 2 == 2
    assert conf["L_bp_cycles"] == l_bp_cycles(cfg) == [0, 3] and "L_bp_steps" not in conf
    hf_conf = transformers.AutoConfig.from_pretrained(out)
    assert hf_conf.num_layers_per_stack == 2 and hf_conf.num_hidden_layers == 2 * 2 * (3 + 1)
    with pytest.raises(ValueError, match="not empty"):
        export_hf(model, cfg, out, None, {})


def test_hf_logits_match_and_generate_works(exported):
    model, cfg, out = exported
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert type(hf).__name__ == "HrmTextForCausalLM"
    rng = np.random.default_rng(0)
    inst, resp = rng.integers(20, 500, 9), rng.integers(20, 500, 7)
    batch = pack([(inst, resp)], 15)
    with torch.no_grad():
        ours = model(batch)
        ids = batch.input_ids[None]
        types = (torch.arange(15) < 9).long()[None]  # 1 = the bidirectional prompt
        theirs = hf(input_ids=ids, token_type_ids=types).logits[0]
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # plain causal (prefix of one token) also agrees: the mask really matters
        causal = model(pack([(inst[:1], np.concatenate([inst[1:], resp]))], 15))
        theirs_causal = hf(input_ids=ids).logits[0]
    torch.testing.assert_close(theirs_causal, causal, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(causal, ours, atol=1e-3)

    prompt = torch.from_numpy(inst)[None]
    gen = hf.generate(prompt, token_type_ids=torch.ones_like(prompt), max_new_tokens=5, do_sample=False,
                      eos_token_id=None, pad_token_id=0)
    new = gen[0, 9:].tolist()
    assert len(new) == 5
    greedy = []
    with torch.no_grad():  # our own greedy loop: the prompt is the prefix, generated tokens the response
        for _ in range(5):
            b = pack([(inst, np.array(greedy + [0], dtype=np.int64))], 9 + len(greedy))
            greedy.append(int(model(b)[-1].argmax()))
    assert new == greedy
    tok = transformers.AutoTokenizer.from_pretrained(out)
    assert tok.bos_token == TOKENIZER_INFO["boq"] and tok.eos_token == TOKENIZER_INFO["eoa"]


def test_hrm_lm_export_of_a_trained_run_round_trips(tmp_path):
    """`hrm-lm export RUN OUT` after a few demo steps: HF logits equal the EMA model's, tokenizer included."""
    from hrm.lm.checkpoint import load_for_inference
    from hrm.lm.cli import main
    from hrm.lm.config import compose
    from hrm.lm.data import BuildArgs, build
    from hrm.lm.train import train

    data = build(BuildArgs(source="synth:300", out=tmp_path / "data", train_tokenizer=400, epochs=1, context=128))
    run_dir = tmp_path / "run"
    overrides = ["arch.size=tiny", "arch.attn_backend=sdpa", "global_batch_size=512", "max_steps=3", "ema=0.5",
                 "wandb_mode=disabled", "device=cpu", f"data_path={data}", f"checkpoint_path={run_dir}"]
    assert train(compose(overrides)) in (0, None)
    out = tmp_path / "hf"
    with pytest.raises(SystemExit) as done:
        main(["export", str(run_dir), str(out)])
    assert done.value.code in (0, None)
    model, cfg, _ = load_for_inference(run_dir, use_ema=True)
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    tok = transformers.AutoTokenizer.from_pretrained(out)
    ids = tok("the sum of 12 and 7")["input_ids"]
    inst, resp = np.array([tok.bos_token_id, *ids]), np.array([5, 6, 7])
    with torch.no_grad():
        rounded = {k: (v.bfloat16().float() if v.is_floating_point() else v) for k, v in model.state_dict().items()}
        model.load_state_dict(rounded)  # the export is bf16, as released: compare on the same rounded weights
        ours = model(pack([(inst, resp)], len(inst) + 2))
        types = (torch.arange(len(inst) + 2) < len(inst)).long()[None]
        theirs = hf(input_ids=torch.tensor([[*inst, 5, 6]]), token_type_ids=types).logits[0]
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=1e-4)
    assert json.loads((out / "config.json").read_text())["bos_token_id"] == tok.bos_token_id
