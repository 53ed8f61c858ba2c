"""CGC-LoRA on the architectures people fine-tune, built tiny from their config classes (offline).

Each model: a fresh adapter equals the base, a mixed-task batch equals each task alone, a
merged task equals the unmerged model, save/load round-trips, the peft export gives the same
logits, and causal LMs generate with task ids. GPT-2's ``Conv1D`` (weights stored transposed)
gets its own checks; the BERT classifier trains its new head through ``modules_to_save``.
"""
import copy

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import (BertConfig, BertForSequenceClassification, Gemma2Config, Gemma2ForCausalLM,
                          GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, MistralConfig,
                          MistralForCausalLM, Phi3Config, Phi3ForCausalLM, Qwen2Config, Qwen2ForCausalLM)
from transformers.pytorch_utils import Conv1D

from cgc_edu import (AdapterConfig, CGCLoRALinear, add_adapters, export_peft_lora, load_adapters,
                     merge_task, save_adapters, task_context, unmerge)
from cgc_edu.adapters.injection import adapter_layers, remove_adapters

from tiny_models import randomize  # tests/tiny_models.py

VOCAB = 64
IDS = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)
DECODER = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, **IDS)

BUILDERS = {
    "llama": lambda: LlamaForCausalLM(LlamaConfig(**DECODER)),
    "qwen2": lambda: Qwen2ForCausalLM(Qwen2Config(**DECODER)),
    "mistral": lambda: MistralForCausalLM(MistralConfig(**DECODER)),
    "phi3": lambda: Phi3ForCausalLM(Phi3Config(**DECODER)),
    "gemma2": lambda: Gemma2ForCausalLM(Gemma2Config(head_dim=8, **DECODER)),
    "gpt2": lambda: GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=2,
                                               n_positions=64, **IDS)),
    "bert": lambda: BertForSequenceClassification(BertConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, num_labels=3, max_position_embeddings=64, pad_token_id=0)),
}
CAUSAL = [name for name in BUILDERS if name != "bert"]


def build(arch: str, dtype: torch.dtype = torch.float32, seed: int = 0) -> torch.nn.Module:
    """The same tiny base model every time for (arch, seed), in eval mode."""
    torch.manual_seed(seed)
    return BUILDERS[arch]().to(dtype).eval()


def config_for(arch: str, **kw) -> AdapterConfig:
    kw.setdefault("modules_to_save", ("classifier",) if arch == "bert" else None)
    return AdapterConfig.cgc_lora(rank=6, alpha=12, n_tasks=3, **kw)


def logits(model, tokens, task_ids=None):
    with torch.no_grad():
        if task_ids is None:
            return model(tokens).logits
        return model(tokens, task_ids=task_ids).logits


def tokens_for(seed: int = 3, batch: int = 3, length: int = 7) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (batch, length), generator=gen)


@pytest.mark.parametrize("arch", list(BUILDERS))
def test_layer_family_on_each_architecture(arch, tmp_path):
    tokens, ids = tokens_for(), torch.tensor([2, 0, 1])
    base_logits = logits(build(arch), tokens)
    model = add_adapters(build(arch), config_for(arch))
    assert torch.equal(logits(model, tokens, ids), base_logits)          # fresh = base, exactly

    randomize(model)
    mixed = logits(model, tokens, ids)
    assert (mixed - base_logits).abs().max() > 1e-2                     # the adapters do something
    for i, t in enumerate(ids.tolist()):                                # mixed batch = each alone
        torch.testing.assert_close(mixed[i:i + 1], logits(model, tokens[i:i + 1], ids[i:i + 1]),
                                   atol=1e-5, rtol=1e-5)

    same_task = torch.full((3,), 1)
    want = logits(model, tokens, same_task)
    merge_task(model, 1)
    torch.testing.assert_close(logits(model, tokens), want, atol=1e-5, rtol=1e-5)
    unmerge(model)

    save_adapters(model, tmp_path / "bank")
    loaded = load_adapters(build(arch), tmp_path / "bank")
    assert torch.equal(logits(loaded, tokens, ids), mixed)

    export_peft_lora(model, 1, tmp_path / "peft")
    peft_model = PeftModel.from_pretrained(build(arch), str(tmp_path / "peft")).eval()
    torch.testing.assert_close(logits(peft_model, tokens), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", CAUSAL)
def test_generate_with_task_ids_on_each_causal_lm(arch):
    model = randomize(add_adapters(build(arch), config_for(arch)), scale=2.0)
    prompts, ids = tokens_for(batch=2, length=4), torch.tensor([0, 2])
    settings = dict(max_new_tokens=4, do_sample=False, pad_token_id=0, output_scores=True,
                    return_dict_in_generate=True)
    together = model.generate(prompts, task_ids=ids, **settings)
    assert together.sequences.shape == (2, 8)
    for i in range(2):
        with task_context(model, ids[i:i + 1]):
            alone = model.generate(prompts[i:i + 1], **settings)
        torch.testing.assert_close(together.scores[0][i:i + 1], alone.scores[0], atol=1e-5, rtol=1e-5)
        assert torch.equal(together.sequences[i:i + 1], alone.sequences)


# ------------------------------------------------------------------ GPT-2's Conv1D
def test_gpt2_default_targets_are_its_conv1d_projections():
    model = add_adapters(build("gpt2"), AdapterConfig.lora(rank=4))
    layers = adapter_layers(model)
    assert {name.rsplit(".", 1)[-1] for name in layers} == {"c_attn", "c_proj", "c_fc"}
    assert len(layers) == 2 * 4 and "lm_head" not in layers              # attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj
    assert all(isinstance(layer.base_layer, Conv1D) and layer.fan_in_fan_out for layer in layers.values())


def test_conv1d_layer_equals_its_equation_and_merges_transposed():
    torch.manual_seed(0)
    conv = Conv1D(12, 8)                                                 # nf=12 outputs, nx=8 inputs: weight (8, 12)
    layer = CGCLoRALinear(conv, AdapterConfig.lora(rank=4, alpha=8))
    assert (layer.in_features, layer.out_features) == (8, 12) and layer.lora_A.shape == (1, 4, 8)
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(2, 5, 8)
    A, B = layer.lora_A[0], layer.lora_B[0]
    want = x @ conv.weight + conv.bias + 2.0 * (x @ A.T) @ B.T
    torch.testing.assert_close(layer(x), want, atol=1e-5, rtol=1e-5)
    before = conv.weight.clone()
    layer.merge(0)
    torch.testing.assert_close(conv.weight, before + 2.0 * (B @ A).T, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(layer(x), want, atol=1e-5, rtol=1e-5)
    layer.unmerge()
    torch.testing.assert_close(conv.weight, before, atol=1e-6, rtol=0)


def test_lora_preset_equals_peft_lora_on_gpt2(tmp_path):
    tokens = tokens_for()
    ours = randomize(add_adapters(build("gpt2"), AdapterConfig.lora(rank=4, alpha=8)))
    theirs = get_peft_model(build("gpt2"), LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn", "c_proj", "c_fc"],
                                                      fan_in_fan_out=True, lora_dropout=0.0)).eval()
    with torch.no_grad():                                                # same A, same B
        for name, layer in adapter_layers(ours).items():
            peft_layer = theirs.base_model.model.get_submodule(name)
            peft_layer.lora_A["default"].weight.copy_(layer.lora_A[0])
            peft_layer.lora_B["default"].weight.copy_(layer.lora_B[0])
    assert len(adapter_layers(ours)) == sum(1 for n, _ in theirs.named_modules() if n.endswith("lora_A"))
    torch.testing.assert_close(logits(ours, tokens), logits(theirs, tokens), atol=1e-5, rtol=1e-5)
    export_peft_lora(ours, 0, tmp_path)                                  # and the export says fan_in_fan_out
    assert '"fan_in_fan_out": true' in (tmp_path / "adapter_config.json").read_text()


# --------------------------------------------------------- modules_to_save (a new head)
def test_modules_to_save_trains_saves_loads_and_is_restored_on_bert(tmp_path):
    config = config_for("bert")
    model = add_adapters(build("bert"), config)
    head = model.classifier
    assert "classifier" not in adapter_layers(model)                     # a head is trained whole, not adapted
    assert head.weight.requires_grad and head.bias.requires_grad
    assert not model.bert.embeddings.word_embeddings.weight.requires_grad
    original_head = head.weight.detach().clone()

    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(3, VOCAB, (12, 6), generator=gen)
    labels, ids = torch.randint(0, 3, (12,), generator=gen), torch.arange(12) % 3
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    losses = []
    for _ in range(8):
        loss = model(tokens, labels=labels, task_ids=ids).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    assert losses[-1] < losses[0] and not torch.equal(head.weight, original_head)

    want = logits(model, tokens, ids)
    save_adapters(model, tmp_path / "bank")
    loaded = load_adapters(build("bert"), tmp_path / "bank")
    assert torch.equal(loaded.classifier.weight, head.weight)
    assert torch.equal(logits(loaded, tokens, ids), want)

    export_peft_lora(model, 2, tmp_path / "peft")                        # the head goes with the export
    peft_model = PeftModel.from_pretrained(build("bert"), str(tmp_path / "peft")).eval()
    torch.testing.assert_close(logits(peft_model, tokens[ids == 2]), want[ids == 2], atol=1e-5, rtol=1e-5)

    bare = remove_adapters(model)                                        # the head's original weights are back
    assert torch.equal(bare.classifier.weight, original_head)
    assert all(p.requires_grad for p in bare.parameters())               # as the fresh model had them
    torch.testing.assert_close(logits(bare, tokens), logits(build("bert"), tokens), atol=0, rtol=0)


def test_modules_to_save_errors_name_the_module_and_leave_the_model_unchanged(tmp_path):
    model = build("bert")
    with pytest.raises(ValueError, match=r"modules_to_save entry 'head' matches no module of "
                                         r"BertForSequenceClassification .*'classifier'"):
        add_adapters(model, config_for("bert", modules_to_save=("head",)))
    with pytest.raises(ValueError, match=r"both a target module and inside the module 'classifier'"):
        add_adapters(model, config_for("bert", target_modules=("query", "classifier")))
    assert not adapter_layers(model) and all(p.requires_grad for p in model.parameters())

    save_adapters(add_adapters(build("bert"), config_for("bert")), tmp_path)
    other = BertForSequenceClassification(BertConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, num_labels=5, max_position_embeddings=64))
    before = copy.deepcopy(other.state_dict())
    with pytest.raises(ValueError, match=r"module 'classifier' has tensors .* in BertForSequenceClassification but"):
        load_adapters(other, tmp_path)
    assert not adapter_layers(other)
    assert all(torch.equal(before[k], v) for k, v in other.state_dict().items())
