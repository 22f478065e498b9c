"""The CUDA path: training with bf16 autocast and cuDNN's LSTM, sampling on the GPU, and a
checkpoint trained there loading on a CPU. Runs where a GPU is (CI has none: skipped there)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from mimic.trainer.fit import TrainConfig, evaluate, fit, throughput
from mimic.trainer.model import CharLSTM, ModelConfig, load_bundle, save_checkpoint
from mimic.trainer.sampler import Row, sample, sample_rows
from mimic.trainer.vocab import Vocab

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
MESSAGES = ["lunch at noon?", "sure, see you there", "who broke the build again",
            "ship it", "the tests are green"] * 60


def test_fit_sample_and_move_to_cpu(tmp_path: Path) -> None:
    cuda = torch.device("cuda")
    vocab = Vocab.build(MESSAGES, min_count=1)
    ids = vocab.encode_corpus(MESSAGES)
    torch.manual_seed(0)
    model = CharLSTM(ModelConfig(len(vocab), embed_dim=16, hidden_size=128, num_layers=2))
    before = evaluate(model.to(cuda), ids[-500:], cuda)
    cfg = TrainConfig(batch_size=16, seq_len=64, lr=1e-2, warmup_steps=5, max_seconds=0,
                      max_steps=150, eval_every_s=0, eval_every_steps=50)
    result = fit(model, ids, ids[-500:], cfg, cuda)
    assert next(model.parameters()).is_cuda
    assert result.best_val_loss < 0.6 < math.log(len(vocab)) < before

    # A fresh state rarely seen in training (it is carried across messages there) garbles some
    # first characters: on a CPU 8 to 20 of 32 draws are whole training messages; an
    # untrained model gives none.
    texts = sample(model, vocab, n=32, temperature=0.5, device=cuda,
                   generator=torch.Generator(cuda).manual_seed(1))
    assert len(texts) == 32 and sum(t in MESSAGES for t in texts) >= 4
    mixed = sample_rows(model, vocab, [Row("who", 1e-4), Row("", 1.0), Row("ship", 0.3)],
                        device=cuda)
    assert mixed[0] == "who broke the build again" and mixed[2].startswith("ship")
    # Drawn against a reference, as the bot serves (here the model itself: no contrast).
    against = sample(model, vocab, n=32, reference=model, temperature=0.5, device=cuda)
    assert len(against) == 32 and sum(t in MESSAGES for t in against) >= 4
    assert throughput(model, cfg, cuda) > 0

    save_checkpoint(model, model.config, tmp_path / "model.pt", vocab)
    on_cpu, loaded_vocab = load_bundle(tmp_path / "model.pt", "cpu")
    x = torch.as_tensor(ids[:200])[None]
    with torch.inference_mode():
        gpu_logits = model.float().eval()(x.to(cuda))[0].cpu()  # no dropout
        cpu_logits = on_cpu(x)[0]
    assert loaded_vocab == vocab
    torch.testing.assert_close(cpu_logits, gpu_logits, atol=2e-3, rtol=2e-3)
