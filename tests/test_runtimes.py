"""Which runtimes compute a slice correctly (gslice.runtimes).

The expected verdicts are written by hand from the runtimes' rules (docs/runtimes.md), not by
calling the code: on E4B (35 layers, KV sharing from layer 20, producers 18 sliding / 19 full,
sparsity on layers 0-9), llama.cpp needs layers 0-19 kept and one FFN width; mlx-vlm one FFN
width; vLLM and Ollama the producers right before the KV-sharing start; mlx-lm both attention
types; transformers nothing more than gslice's own rules."""

from __future__ import annotations

import copy
import json

import pytest

import gslice
from gslice import gemma3n, runtimes
from gslice.errors import SpecError
from gslice.spec import SliceSpec

E4B = gemma3n.e4b_architecture()
RUNTIMES = ["transformers", "vllm", "llama.cpp", "ollama", "mlx-lm", "mlx-vlm"]

WIDTH = {"llama.cpp": [("ffn-width", "refused")], "mlx-vlm": [("ffn-width", "refused")]}
# skips below 20 (so the KV-sharing start moves) and in 5-9 (so sparse layers move), two widths
BLOCKS_036 = {
    "llama.cpp": [("ffn-width", "refused"), ("kv-sharing-start", "wrong"), ("sparsity-layers", "wrong")],
    "mlx-vlm": [("ffn-width", "refused")],
}
# skips 10-14 (the KV-sharing start moves to 15), two widths
BLOCKS_0136 = {"llama.cpp": [("ffn-width", "refused"), ("kv-sharing-start", "wrong")], "mlx-vlm": [("ffn-width", "refused")]}

# preset -> {runtime: [(rule, effect), ...]} for the runtimes that do not compute it correctly
PRESET_VERDICTS = {
    "google-main": {},
    "google-e2b": {},  # skips 20-24 only, one width 8192
    "google-e1.96b-layer": WIDTH,
    "google-e2.54b-layer": WIDTH,
    "google-e2.69b-layer": WIDTH,
    "google-e2.98b-layer": WIDTH,
    "google-e3.18b-layer": WIDTH,
    "google-e3.39b-layer": WIDTH,
    "google-e3.59b-layer": WIDTH,
    "google-e3.79b-layer": WIDTH,
    "google-e2.49b-block": WIDTH,
    "google-e2.73b-block": WIDTH,
    "google-e2.98b-block": WIDTH,
    "google-e3.24b-block": WIDTH,
    "google-e3.49b-block": WIDTH,
    "google-e3.79b-block": WIDTH,
    "gslice-e0.51b": BLOCKS_036,
    "gslice-e0.52b": {},
    "gslice-e0.66b": BLOCKS_036,
    "gslice-e0.78b": {},
    "gslice-e0.88b": BLOCKS_0136,
    "gslice-e0.96b": {},
    "gslice-e1.12b": BLOCKS_036,
    "gslice-e1.15b": {},
    "gslice-e1.28b": {"llama.cpp": [("kv-sharing-start", "wrong")]},  # one width, but skips 10-14
    "gslice-e1.48b": BLOCKS_0136,
    "gslice-e1.59b": {},
    "gslice-e1.84b": WIDTH,  # skips 20-29 only
    "gslice-e2.29b": {},
}


def verdicts(spec: SliceSpec | None, arch=E4B) -> runtimes.Compatibility:
    return runtimes.compatibility(arch, None if spec is None else gemma3n.resolve(arch, spec))


def messages(compat: runtimes.Compatibility, runtime: str) -> list[tuple[str, str]]:
    return [(p.effect, p.message) for p in compat[runtime].problems]


def test_every_preset_against_every_runtime():
    assert [p.id for p in gslice.presets()] == list(PRESET_VERDICTS)
    for preset in gslice.presets():
        compat = verdicts(preset.spec_for(E4B))
        got = {v.runtime.name: [(p.rule, p.effect) for p in v.problems] for v in compat.verdicts if v.problems}
        assert got == PRESET_VERDICTS[preset.id], preset.id
        assert [v.runtime.name for v in compat.verdicts] == RUNTIMES
        assert not any(p.source for v in compat.verdicts for p in v.problems), preset.id  # E4B itself runs everywhere


def test_the_unsliced_source_runs_everywhere():
    compat = verdicts(None)
    assert compat.supported == tuple(RUNTIMES) and compat.summary() == "all"


def test_messages_of_a_preset_that_moves_kv_sharing_sparsity_and_widths():
    compat = verdicts(gslice.catalogue.find_preset("gslice-e0.51b").spec_for(E4B))
    assert messages(compat, "llama.cpp") == [
        ("refused", "layer 4 has FFN width 8192, but llama.cpp builds every layer's FFN at layer 0's width 2048, so "
                    "loading fails (tensor 'blk.4.ffn_gate.weight' has wrong shape); 3 layers differ: 4,9,14"),
        ("wrong", "layers 5-14 are skipped, which moves the KV-sharing start off layer 20 to layer 10 "
                  "(llama.cpp fixes it at 20, producers 18 and 19)"),
        ("wrong", "layers 5-9 (source layers 15-19) have activation sparsity 0.0, but llama.cpp makes exactly "
                  "layers 0-9 sparse (0.95) whatever the config says"),
    ]
    assert messages(compat, "mlx-vlm") == [
        ("refused", "layer 4 has FFN width 8192, but mlx-vlm builds every MLP at intermediate_size[0] = 2048, so "
                    "loading fails (wrong shape for layer 4's mlp.gate_proj.weight); 3 layers differ: 4,9,14"),
    ]
    assert compat["llama.cpp"].problems[0].layers == (4, 9, 14)
    assert compat["llama.cpp"].problems[2].layers == (5, 6, 7, 8, 9)
    assert compat.summary() == "all but llama.cpp, mlx-vlm"


def test_a_width_that_differs_in_a_later_layer_is_named_with_its_source_layer():
    # google-e1.96b-layer: skip 20-24, layer 4 at 16384, every other layer at 8192
    compat = verdicts(gslice.catalogue.find_preset("google-e1.96b-layer").spec_for(E4B))
    assert messages(compat, "llama.cpp") == [
        ("refused", "layer 4 has FFN width 16384, but llama.cpp builds every layer's FFN at layer 0's width 8192, so "
                    "loading fails (tensor 'blk.4.ffn_gate.weight' has wrong shape)"),
    ]
    spec = SliceSpec(layers_to_skip=(0, 1, 2, 3, 4), ffn_dims=(8192,) * 29 + (16384,))
    assert messages(verdicts(spec), "mlx-vlm")[0][1].startswith("layer 29 (source layer 34) has FFN width 16384")


def test_skipping_layer_12_aborts_llama_cpp():
    # 34 layers, KV sharing from 19: llama.cpp's layer 18 is the source's full-attention 19,
    # so its sliding layers 20+ find no layer 18 in the sliding cache (GGML_ASSERT)
    compat = verdicts(SliceSpec(layers_to_skip=(12,)))
    assert messages(compat, "llama.cpp") == [
        ("aborts", "layer 12 is skipped, which moves the KV-sharing start off layer 20 to layer 19 "
                   "(llama.cpp fixes it at 20, producers 18 and 19)"),
    ]
    assert compat.supported == ("transformers", "vllm", "ollama", "mlx-lm", "mlx-vlm")


def test_skipping_blocks_below_20_with_matching_types_is_wrong_not_an_abort():
    # skip 10-14: 30 layers, KV sharing from 15; llama.cpp's 18/19 are sliding/full (source 23/24)
    assert messages(verdicts(SliceSpec(layers_to_skip=tuple(range(10, 15)))), "llama.cpp") == [
        ("wrong", "layers 10-14 are skipped, which moves the KV-sharing start off layer 20 to layer 15 "
                  "(llama.cpp fixes it at 20, producers 18 and 19)"),
    ]


def test_positional_producers_of_vllm_and_ollama():
    # no full-attention layer is shared, so 19 may go: the sliding producer 18 is then right
    # before the KV-sharing start (19), where vLLM and Ollama expect the full-attention one
    compat = verdicts(SliceSpec(layers_to_skip=(19, 24, 29, 34)))
    for runtime, name in (("vllm", "vLLM"), ("ollama", "Ollama")):
        assert messages(compat, runtime) == [
            ("wrong", "the sliding_attention layers 19-30 (source layers 20-23,25-28,30-33) reuse the keys/values "
                      "of layer 18, the last sliding_attention layer before the KV-sharing start 19, but "
                      f"{name} reads layer 17 (it takes the sliding producer to be 2 layers before the start and "
                      "the full-attention one 1 before)"),
        ]
        assert compat[runtime].problems[0].layers == tuple(range(19, 31))
    assert compat.supported == ("transformers", "mlx-lm", "mlx-vlm")


def test_a_slice_without_full_attention_layers():
    compat = verdicts(SliceSpec(layers_to_skip=(4, 9, 14, 19, 24, 29, 34)))
    for runtime in ("mlx-lm", "mlx-vlm"):
        assert messages(compat, runtime) == [
            ("refused", f"the slice has no full_attention layer, but {runtime} looks up its first and last "
                        "full_attention layer to place the KV caches, so loading fails (ValueError: "
                        "'full_attention' is not in list)"),
        ]
    assert compat.supported == ("transformers",)


def e2b_config() -> dict:
    """Google's E2B as published: 30 layers, the last 10 KV-shared, FFN 8192, sparse 0-9."""
    config = copy.deepcopy(gemma3n.e4b_config())
    text = config["text_config"]
    text.update(num_hidden_layers=30, num_kv_shared_layers=10, intermediate_size=[8192] * 30,
                layer_types=text["layer_types"][:30], activation_sparsity_pattern=[0.95] * 10 + [0.0] * 20)
    return config


def test_an_e2b_source():
    e2b = gemma3n.architecture(e2b_config())
    assert (e2b.first_shared, e2b.producers) == (20, {"sliding_attention": 18, "full_attention": 19})
    assert verdicts(None, e2b).summary() == "all"  # the KV-sharing start is 30 - 10 = 20, as llama.cpp fixes it
    assert verdicts(SliceSpec(layers_to_skip=(20, 21, 22, 23, 24), ffn_dims=4096), e2b).summary() == "all"
    assert messages(verdicts(SliceSpec(layers_to_skip=(12,)), e2b), "llama.cpp") == [
        ("aborts", "layer 12 is skipped, which moves the KV-sharing start off layer 20 to layer 19 "
                   "(llama.cpp fixes it at 20, producers 18 and 19)"),
    ]


def test_a_source_whose_kv_sharing_does_not_start_at_20():
    config = copy.deepcopy(gemma3n.e4b_config())
    config["text_config"]["num_kv_shared_layers"] = 10  # layers 25-34 share: producers 23 and 24
    arch = gemma3n.architecture(config)
    compat = verdicts(None, arch)
    assert compat.supported == ("transformers", "vllm", "ollama", "mlx-lm", "mlx-vlm")
    problem = compat["llama.cpp"].problems[0]
    assert (problem.effect, problem.message, problem.source) == (
        "wrong", "the source's KV sharing starts at layer 25 (llama.cpp fixes it at 20, producers 18 and 19)", True)
    # skipping 15-19 puts it back at 20, with the producers 23 and 24 at 18 and 19
    assert verdicts(SliceSpec(layers_to_skip=(15, 16, 17, 18, 19)), arch).summary() == "all"
    moved = verdicts(SliceSpec(layers_to_skip=(21,)), arch)["llama.cpp"].problems[0]
    assert (moved.effect, moved.message) == (
        "wrong", "the source's KV sharing starts at layer 25, and with layer 21 skipped it is at layer 24 "
                 "(llama.cpp fixes it at 20, producers 18 and 19)")
    moved = verdicts(SliceSpec(layers_to_skip=(0, 1)), arch)["llama.cpp"].problems[0]
    assert moved.message == ("the source's KV sharing starts at layer 25, and with layers 0-1 skipped it is at layer 23 "
                             "(llama.cpp fixes it at 20, producers 18 and 19)")


def test_values_llama_cpp_fixes_in_code(e4b):
    # the tiny test checkpoint: laurel_rank 4 and per-layer input width 8, not 64 and 256
    arch = gemma3n.architecture(json.loads((e4b / "config.json").read_text()))
    compat = verdicts(None, arch)
    assert [(p.rule, p.effect, p.message, p.source) for p in compat["llama.cpp"].problems] == [
        ("fixed-value", "refused", "the source's laurel_rank is 4; llama.cpp fixes it at 64, so loading fails "
                                   "(wrong tensor shapes)", True),
        ("fixed-value", "refused", "the source's hidden_size_per_layer_input is 8; llama.cpp fixes it at 256, so "
                                   "loading fails (wrong tensor shapes)", True),
    ]
    assert compat.summary() == "all but llama.cpp"
    config = copy.deepcopy(gemma3n.e4b_config())
    config["text_config"].update(altup_active_idx=1, final_logit_softcapping=50.0, altup_correct_scale=False)
    compat = verdicts(None, gemma3n.architecture(config))
    assert messages(compat, "llama.cpp") == [
        ("wrong", "the source's altup_active_idx is 1; llama.cpp fixes it at 0, so its logits are wrong"),
        ("wrong", "the source's final_logit_softcapping is 50.0; llama.cpp fixes it at 30.0, so its logits are wrong"),
        ("wrong", "the source's altup_correct_scale is False; llama.cpp fixes it at True, so its logits are wrong"),
    ]
    assert messages(compat, "vllm") == [
        ("refused", "the source's altup_correct_scale is False; vLLM asserts it is True, so loading fails"),
    ]


def test_an_unknown_runtime_is_named():
    with pytest.raises(SpecError, match="^runtime 'lm studio' is not one of transformers, vllm, llama.cpp, ollama, mlx-lm, mlx-vlm$"):
        verdicts(None)["lm studio"]


def test_verdicts_are_frozen_and_json_able():
    compat = verdicts(SliceSpec(layers_to_skip=(12,)))
    d = json.loads(json.dumps(compat.to_dict()))
    assert d["summary"] == "all but llama.cpp" and d["supported"] == ["transformers", "vllm", "ollama", "mlx-lm", "mlx-vlm"]
    llama = d["verdicts"][2]
    assert (llama["runtime"], llama["ok"], llama["ran"]) == ("llama.cpp", False, True)
    assert llama["problems"][0] == {"rule": "kv-sharing-start", "message": compat["llama.cpp"].problems[0].message,
                                    "effect": "aborts", "layers": [], "source": False}
    assert llama["also"] == ["LM Studio (GGUF models)"]
    with pytest.raises(AttributeError):
        compat.verdicts[0].problems = ()


# -- the commands ---------------------------------------------------------------------------


@pytest.fixture
def e4b_config_file(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(gemma3n.e4b_config()))
    return path


def runtimes_block(out: str) -> list[str]:
    block = next(part for part in out.split("\n\n") if part.startswith("which runtimes"))
    return block.splitlines()


def test_plan_lists_every_runtime(cli, e4b_config_file):
    result = cli("plan", e4b_config_file, "--preset", "gslice-e1.28b")
    assert result.code == 0, result.err
    assert runtimes_block(result.out) == [
        "which runtimes compute this slice correctly: all but llama.cpp",
        "  transformers  yes",
        "  vllm          yes (read in its code, not run)",
        "  llama.cpp     no, loads it and computes wrong logits without an error: layers 10-14 are skipped, which "
        "moves the KV-sharing start off layer 20 to layer 15 (llama.cpp fixes it at 20, producers 18 and 19)",
        "  ollama        yes (read in its code, not run)",
        "  mlx-lm        yes",
        "  mlx-vlm       yes",
    ]
    d = json.loads(cli("plan", e4b_config_file, "--preset", "gslice-e1.28b", "--json").out)
    assert d["runtimes"]["summary"] == "all but llama.cpp"
    assert [p["rule"] for p in d["runtimes"]["verdicts"][2]["problems"]] == ["kv-sharing-start"]


def test_info_says_which_runtimes_run_the_source(cli, e4b):
    result = cli("info", e4b)
    assert result.code == 0, result.err
    assert runtimes_block(result.out)[:4] == [
        "which runtimes compute it as it is (unsliced) correctly: all but llama.cpp",
        "  transformers  yes",
        "  vllm          yes (read in its code, not run)",
        "  llama.cpp     no, refuses to load it: the source's laurel_rank is 4; llama.cpp fixes it at 64, so loading "
        "fails (wrong tensor shapes)",
    ]
    d = json.loads(cli("info", e4b, "--json").out)
    assert d["runtimes"]["supported"] == ["transformers", "vllm", "ollama", "mlx-lm", "mlx-vlm"]


def test_slice_report_names_the_runtimes_that_get_it_wrong(cli, e4b, tmp_path):
    result = cli("slice", e4b, "-o", tmp_path / "out", "--layers-to-skip", "12")
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert "runtimes      computed correctly by: all but llama.cpp" in lines
    assert lines[-1] == ("             no, aborts the whole process when it creates a context: layer 12 is skipped, which "
                         "moves the KV-sharing start off layer 20 to layer 19 (llama.cpp fixes it at 20, producers 18 and 19)")


def test_presets_json_has_the_runtimes(cli):
    d = json.loads(cli("presets", "--json").out)
    assert [r["name"] for r in d["runtimes"]] == RUNTIMES
    for p in d["presets"]:
        assert p["runtimes"] == [r for r in RUNTIMES if r not in PRESET_VERDICTS[p["id"]]], p["id"]
