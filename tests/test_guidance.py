import math

import pytest
import torch

from ivmixed.guidance import combine_guidance, guidance_schedule


@pytest.mark.parametrize("begin,end,n,rho", [(2.0, 6.0, 50, 7.0), (6.0, 2.0, 25, 7.0), (4.0, 4.0, 10, 3.0), (0.0, 5.0, 7, 1.0)])
def test_schedule_matches_karras_interpolation(begin, end, n, rho):
    got = guidance_schedule(begin, end, n, rho)
    assert len(got) == n
    assert got[0] == pytest.approx(begin, abs=1e-12)
    assert got[-1] == pytest.approx(end, rel=1e-12, abs=1e-12)
    for i, w in enumerate(got):
        ramp = i / (n - 1)
        expected = (begin ** (1 / rho) * (1 - ramp) + end ** (1 / rho) * ramp) ** rho
        assert w == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_schedule_is_monotone_and_constant_when_equal():
    up = guidance_schedule(2.0, 6.0, 50, 7.0)
    assert all(a < b for a, b in zip(up, up[1:]))
    assert guidance_schedule(4.0, 4.0, 13, 7.0) == [pytest.approx(4.0)] * 13


def test_schedule_single_step_and_bad_values():
    assert guidance_schedule(3.0, 5.0, 1) == [3.0]
    with pytest.raises(ValueError):
        guidance_schedule(1.0, 2.0, 0)
    with pytest.raises(ValueError):
        guidance_schedule(1.0, 2.0, 5, rho=0)
    with pytest.raises(ValueError):
        guidance_schedule(-1.0, 2.0, 5)


def test_schedule_length_follows_steps_not_fifty():
    assert len(guidance_schedule(2.0, 6.0, 20)) == 20
    assert len(guidance_schedule(2.0, 6.0, 80)) == 80


def test_combine_guidance_positive_and_negative():
    u, c = torch.tensor([1.0, 2.0]), torch.tensor([3.0, -2.0])
    assert torch.equal(combine_guidance(u, c, 2.0), torch.tensor([5.0, -6.0]))
    assert torch.equal(combine_guidance(u, c, -2.0), torch.tensor([-3.0, 10.0]))
    assert torch.equal(combine_guidance(u, c, 1.0), c)
    assert math.isclose(combine_guidance(torch.tensor(0.0), torch.tensor(1.0), 0.0).item(), 0.0)
