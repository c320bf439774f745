"""Generate the merge benchmark's inputs: three random bf16 Llamas of a real 1.7B-parameter configuration.

The configuration is SmolLM2-1.7B's (a Llama: 24 layers, hidden 2048, MLP 8192, vocabulary 49152, tied
embeddings): 1.71B parameters, 3.42 GB per model in bf16. Tensor names and shapes come from transformers'
``LlamaForCausalLM`` built on the meta device (no memory, no initialisation); values are ``N(0, 0.02)`` drawn
per tensor and written straight into ``model.safetensors`` one tensor at a time, so generating the case needs
little memory.

    python bench/make_llama_case.py            # bench/work/llama-1.7b/model-{0,1,2}
    python bench/make_llama_case.py --quick    # a 4-layer variant, for trying things (~0.5 GB per model)
    python bench/make_llama_case.py --7b       # bench/work/llama-7b/model-0: Llama-2-7B's shapes, 13.5 GB
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cocktail_bot.checkpoint import TensorInfo  # noqa: E402
from cocktail_bot.shards import ShardWriter, plan_shards  # noqa: E402
from tools.tiny_models import make_llama_tokenizer  # noqa: E402

WORK = Path(__file__).resolve().parent / "work"
MODELS = 3
CHUNK = 16 * 2**20


def smollm2_config(layers: int) -> LlamaConfig:
    """SmolLM2-1.7B's published configuration (HuggingFaceTB/SmolLM2-1.7B), with a chosen layer count."""
    return LlamaConfig(
        vocab_size=49152,
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=layers,
        num_attention_heads=32,
        num_key_value_heads=32,
        max_position_embeddings=8192,
        rope_theta=130000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        torch_dtype="bfloat16",
        architectures=["LlamaForCausalLM"],
    )


def llama2_7b_config() -> LlamaConfig:
    """Llama-2-7B's published configuration (meta-llama/Llama-2-7b-hf): 6.74B parameters, untied head."""
    return LlamaConfig(
        vocab_size=32000,
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        torch_dtype="bfloat16",
        architectures=["LlamaForCausalLM"],
    )


def tensor_infos(config: LlamaConfig) -> list[tuple[str, TensorInfo]]:
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    return [
        (name, TensorInfo(torch.bfloat16, tuple(tensor.shape)))
        for name, tensor in model.state_dict().items()
        if not (config.tie_word_embeddings and name == "lm_head.weight")
    ]


def write_model(folder: Path, config: LlamaConfig, seed: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(folder)
    make_llama_tokenizer().save_pretrained(folder)
    if (folder / "model.safetensors").is_file():
        print(f"{folder}/model.safetensors exists")
        return
    (shard,) = plan_shards(tensor_infos(config), max_shard_bytes=2**62)
    generator = torch.Generator().manual_seed(seed)
    writer = ShardWriter(folder / shard.filename, shard)
    for _, info in shard.tensors:
        for start in range(0, info.numel, CHUNK):
            count = min(CHUNK, info.numel - start)
            writer.write(torch.randn(count, generator=generator).mul_(0.02).to(torch.bfloat16))
    writer.finish()
    print(f"wrote {folder}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    shape = parser.add_mutually_exclusive_group()
    shape.add_argument("--quick", action="store_true", help="4 layers instead of 24")
    shape.add_argument("--7b", dest="seven_b", action="store_true", help="one model of Llama-2-7B's shapes")
    args = parser.parse_args()
    if args.seven_b:
        write_model(WORK / "llama-7b" / "model-0", llama2_7b_config(), 0)
        return
    name, layers = ("llama-quick", 4) if args.quick else ("llama-1.7b", 24)
    config = smollm2_config(layers)
    for seed in range(MODELS):
        write_model(WORK / name / f"model-{seed}", config, seed)


if __name__ == "__main__":
    main()
