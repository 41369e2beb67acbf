"""Chunked log-probs equal the full-logits computation in values and gradients, and never hold all logits."""

import pytest
import torch

from areal.algos import chunked_token_logprobs


def reference(hidden, head, targets, temperature):
    logits = head(hidden).float() / temperature
    return torch.log_softmax(logits, dim=-1).gather(-1, targets[:, None]).squeeze(-1)


@pytest.mark.parametrize("chunk", [0, 1, 7, 64, 1000])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_values_and_gradients_equal_the_full_logits_path(chunk, temperature):
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 97, bias=False).double()
    hidden = torch.randn(50, 16, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 97, (50,))
    weights = torch.randn(50, dtype=torch.float64)  # an arbitrary downstream use of the log-probs

    ours = chunked_token_logprobs(hidden, head, targets, temperature, chunk)
    (ours.double() * weights).sum().backward()
    grads = hidden.grad.clone(), head.weight.grad.clone()
    hidden.grad, head.weight.grad = None, None
    ref = reference(hidden, head, targets, temperature)
    (ref.double() * weights).sum().backward()

    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, ref.float(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grads[0], hidden.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(grads[1], head.weight.grad, rtol=1e-5, atol=1e-7)


def test_bf16_models_score_in_float32_like_the_reference():
    torch.manual_seed(1)
    head = torch.nn.Linear(8, 33, bias=False).bfloat16()
    hidden = torch.randn(20, 8).bfloat16()
    targets = torch.randint(0, 33, (20,))
    ours = chunked_token_logprobs(hidden, head, targets, 1.0, 6)
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, reference(hidden, head, targets, 1.0), rtol=1e-6, atol=1e-6)


class CountingHead(torch.nn.Module):
    """A linear head that records the largest logits tensor it ever produced."""

    def __init__(self, h, v):
        super().__init__()
        self.linear = torch.nn.Linear(h, v, bias=False)
        self.largest = 0

    def forward(self, x):
        self.largest = max(self.largest, x.shape[0])
        return self.linear(x)


def test_no_forward_or_backward_computes_more_than_one_chunk_of_logits():
    head = CountingHead(4, 11)
    hidden = torch.randn(100, 4, requires_grad=True)
    out = chunked_token_logprobs(hidden, head, torch.randint(0, 11, (100,)), 1.0, 16)
    out.sum().backward()  # recomputation calls the head again, chunk by chunk
    assert head.largest == 16 and hidden.grad.shape == hidden.shape


def test_bad_shapes_and_settings_are_refused():
    head = torch.nn.Linear(4, 5)
    with pytest.raises(ValueError, match="hidden"):
        chunked_token_logprobs(torch.randn(3, 4), head, torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="chunk_tokens"):
        chunked_token_logprobs(torch.randn(3, 4), head, torch.zeros(3, dtype=torch.long), chunk_tokens=-1)
    with pytest.raises(ValueError, match="temperature"):
        chunked_token_logprobs(torch.randn(3, 4), head, torch.zeros(3, dtype=torch.long), temperature=0.0)
