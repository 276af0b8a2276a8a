"""Geometry of the fast generic deformable conv: 4 bilinear reads per tap, any offsets.

A geometry of the shared kernel of :mod:`._tap_kernels` (its docstring lists the protocol).
Output location (i, j), tap k = kw·ky + kx samples ``x`` at

    y = i·stride_h − pad_h + ky·dilation_h + Δy_k,   x = j·stride_w − pad_w + kx·dilation_w + Δx_k

(``torchvision.ops.deform_conv2d``'s offset layout: channel 2k is Δy_k, 2k+1 is Δx_k) with
bilinear interpolation and zero padding: each of the 4 neighbours (y0, x0), (y0, x0+1),
(y0+1, x0), (y0+1, x0+1), y0 = floor(y), counts only inside the map, with weight
(1−ly)(1−lx), (1−ly)lx, ly(1−lx), ly·lx. A DCNv2 mask m_k scales the tap's 4 weights. The
position gradient is torchvision's: the derivative of those weights with the floor held fixed
(one-sided at integer positions), neighbours outside the map contributing nothing. Non-finite
offsets read nothing.
"""

from __future__ import annotations

import torch
from torch import Tensor


class _DeformGeometry:
    """The 4·K reads of every output location of a deformable conv, and the input gradients.

    Args:
        offset: [N, 2K, H_out, W_out] (Δy, Δx) per tap, input pixels.
        mask: [N, K, H_out, W_out] or None.
        in_shape: (H, W) of the input map.
        kernel, stride, padding, dilation: (h, w) pairs, as ``nn.Conv2d``.
        pos_dtype: dtype of the sample positions and weights (float32, or float64).

    Attributes: the protocol of :mod:`._tap_kernels` (``n``, ``in_hw``, ``out_hw``,
    ``out_shape``, ``taps`` K, ``tap_nnz`` (4,)·K, ``nnz`` 4K, ``vals``, ``cols``,
    ``tap_index``, ``input_grad``).
    """

    def __init__(
        self,
        offset: Tensor,
        mask: Tensor | None,
        in_shape: tuple[int, int],
        kernel: tuple[int, int],
        stride: tuple[int, int],
        padding: tuple[int, int],
        dilation: tuple[int, int],
        pos_dtype: torch.dtype,
    ) -> None:
        n, _, ho, wo = offset.shape
        kh, kw = kernel
        k = kh * kw
        h, w = in_shape
        dev = offset.device
        self.n, self.in_hw, self.out_hw, self.out_shape = n, h * w, ho * wo, (ho, wo)
        self.taps, self.tap_nnz, self.nnz = k, (4,) * k, 4 * k
        self.offset_dtype = offset.dtype
        self.mask_dtype = mask.dtype if mask is not None else None
        p = n * ho * wo
        # [P, K, 2] (Δy, Δx), location-major; P = N·H_out·W_out. A copy: updated in place below.
        off = offset.detach().to(pos_dtype, copy=True).view(n, k, 2, ho, wo).permute(0, 3, 4, 1, 2).reshape(p, k, 2)
        ky = torch.arange(kh, device=dev).repeat_interleave(kw)  # tap k = kw·ky + kx
        kx = torch.arange(kw, device=dev).repeat(kh)
        base_y = torch.arange(ho, device=dev).view(ho, 1) * stride[0] - padding[0] + ky * dilation[0]  # [Ho, K]
        base_x = torch.arange(wo, device=dev).view(wo, 1) * stride[1] - padding[1] + kx * dilation[1]  # [Wo, K]
        # The same float ops as torchvision: integer base + offset.
        y = off[..., 0].view(n, ho, wo, k).add_(base_y.to(pos_dtype).view(1, ho, 1, k)).view(p, k)
        x = off[..., 1].view(n, ho, wo, k).add_(base_x.to(pos_dtype).view(1, 1, wo, k)).view(p, k)
        y = torch.nan_to_num_(y, nan=-2.0, posinf=h + 1.0, neginf=-2.0).clamp_(-2.0, h + 1.0)
        x = torch.nan_to_num_(x, nan=-2.0, posinf=w + 1.0, neginf=-2.0).clamp_(-2.0, w + 1.0)
        y0, x0 = torch.floor(y), torch.floor(x)
        ly, lx = y - y0, x - x0
        hy, hx = 1.0 - ly, 1.0 - lx
        in_y0, in_y1 = (y0 >= 0) & (y0 <= h - 1), (y0 >= -1) & (y0 <= h - 2)
        in_x0, in_x1 = (x0 >= 0) & (x0 <= w - 1), (x0 >= -1) & (x0 <= w - 2)
        # Corners c = (y0,x0), (y0,x0+1), (y0+1,x0), (y0+1,x0+1): [P, K, 4].
        inside = torch.stack([in_y0 & in_x0, in_y0 & in_x1, in_y1 & in_x0, in_y1 & in_x1], dim=2)
        self.bw = torch.stack([hy * hx, hy * lx, ly * hx, ly * lx], dim=2).masked_fill_(~inside, 0.0)
        self._inside = inside
        self._hy, self._ly, self._hx, self._lx = hy, ly, hx, lx
        self._mask = mask.detach().to(pos_dtype).permute(0, 2, 3, 1).reshape(p, k) if mask is not None else None
        vals = self.bw * self._mask.unsqueeze(2) if mask is not None else self.bw
        self.vals = vals.reshape(-1)
        yi0 = y0.clamp(0, h - 1).to(torch.int32)
        yi1 = (y0 + 1).clamp(0, h - 1).to(torch.int32)
        xi0 = x0.clamp(0, w - 1).to(torch.int32)
        xi1 = (x0 + 1).clamp(0, w - 1).to(torch.int32)
        q = torch.stack([yi0 * w + xi0, yi0 * w + xi1, yi1 * w + xi0, yi1 * w + xi1], dim=2)  # [P, K, 4]
        self.cols = q.reshape(-1)
        img = torch.arange(n, device=dev, dtype=torch.int32).repeat_interleave(ho * wo).view(p, 1, 1)
        tap = torch.arange(k, device=dev, dtype=torch.int32).view(1, k, 1)
        self._tap_index: Tensor | None = ((img * (h * w) + q) * k + tap).reshape(-1)

    @property
    def tap_index(self) -> Tensor:
        if self._tap_index is None:
            raise RuntimeError("_DeformGeometry: tap_index was dropped")
        return self._tap_index

    def drop_tap_index(self) -> None:
        """Free ``tap_index`` (the forward's; backward reads ``cols``)."""
        self._tap_index = None

    def input_grad(self, dots: Tensor) -> tuple[Tensor, ...]:
        """``(∂L/∂offset [N, 2K, H_out, W_out], ∂L/∂mask [N, K, H_out, W_out])`` (the second
        only with a mask) from ``dots`` [P, 4K] = ∂L/∂(read weight)."""
        n, k = self.n, self.taps
        ho, wo = self.out_shape
        p = n * ho * wo
        d = dots.to(self.bw.dtype).view(p, k, 4)
        ins = self._inside.to(d.dtype)
        hy, ly, hx, lx = self._hy, self._ly, self._hx, self._lx
        # ∂weight/∂y and ∂weight/∂x of the 4 corners (floor fixed), zero outside the map.
        dwy = torch.stack([-hx, -lx, hx, lx], dim=2) * ins
        dwx = torch.stack([-hy, hy, -ly, ly], dim=2) * ins
        gy = (d * dwy).sum(2)  # [P, K]
        gx = (d * dwx).sum(2)
        if self._mask is not None:
            gy, gx = gy * self._mask, gx * self._mask
        g_off = torch.stack([gy, gx], dim=2).view(n, ho, wo, 2 * k).permute(0, 3, 1, 2).to(self.offset_dtype)
        if self._mask is None:
            return (g_off,)
        g_mask = (d * self.bw).sum(2).view(n, ho, wo, k).permute(0, 3, 1, 2).to(self.mask_dtype)
        return g_off, g_mask
