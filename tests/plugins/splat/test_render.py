"""The pure-torch splat renderer: a brute-force reference, gsplat's projection, finite
differences, culling, statistics and a DefaultStrategy loop on tiny scenes."""
from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("gsplat")

from gsplat.cuda._torch_impl import _fully_fused_projection, _quat_scale_to_covar_preci  # noqa: E402
from gsplat.strategy import DefaultStrategy  # noqa: E402

from sparsity_plugins.splat import render as render_module  # noqa: E402
from sparsity_plugins.splat.render import rasterize, render  # noqa: E402


def scene(n, seed=0, dtype=torch.float64, cameras=1, width=23, height=17, scale=0.15):
    """Random Gaussians in [-1, 1]³ seen by ``cameras`` cameras about 4 units away."""
    g = torch.Generator().manual_seed(seed)
    means = torch.rand(n, 3, generator=g, dtype=dtype) * 2 - 1
    quats = torch.randn(n, 4, generator=g, dtype=dtype)
    scales = scale * torch.exp(0.4 * torch.randn(n, 3, generator=g, dtype=dtype))
    opacities = 0.05 + 0.9 * torch.rand(n, generator=g, dtype=dtype)
    colors = torch.rand(n, 3, generator=g, dtype=dtype)
    viewmats, Ks = [], []
    for c in range(cameras):
        a = 0.4 * c
        rot = torch.tensor([[math.cos(a), 0, -math.sin(a)], [0, 1, 0], [math.sin(a), 0, math.cos(a)]], dtype=dtype)
        v = torch.eye(4, dtype=dtype)
        v[:3, :3] = rot
        v[:3, 3] = torch.tensor([0.1 * c, -0.05, 4.0], dtype=dtype)
        viewmats.append(v)
        f = 0.5 * width / math.tan(math.radians(22))
        Ks.append(torch.tensor([[f, 0, width / 2 + 0.3], [0, f * 1.05, height / 2 - 0.2], [0, 0, 1]], dtype=dtype))
    return means, quats, scales, opacities, colors, torch.stack(viewmats), torch.stack(Ks)


def dense_reference(means, quats, scales, opacities, colors, viewmats, Ks, width, height, backgrounds=None):
    """Every pixel against every Gaussian, one Gaussian at a time in depth order, with
    gsplat's own pure-torch projection; returns images, alphas and per-Gaussian weights."""
    covars, _ = _quat_scale_to_covar_preci(quats, scales, True, False)
    radii, means2d, depths, conics, _ = _fully_fused_projection(means, covars, viewmats, Ks, width, height)
    ys, xs = torch.meshgrid(torch.arange(height, dtype=means.dtype), torch.arange(width, dtype=means.dtype),
                            indexing="ij")
    px, py = xs.reshape(-1) + 0.5, ys.reshape(-1) + 0.5
    images, alphas, weights = [], [], []
    for c in range(len(viewmats)):
        T = torch.ones_like(px)
        done = torch.zeros_like(px, dtype=torch.bool)
        image = torch.zeros(px.numel(), colors.shape[-1], dtype=means.dtype)
        w_all = torch.zeros(len(means), px.numel(), dtype=means.dtype)
        for i in torch.sort(depths[c], stable=True).indices.tolist():
            if not bool((radii[c, i] > 0).all()):
                continue
            dx, dy = px - means2d[c, i, 0], py - means2d[c, i, 1]
            a, b, cc = conics[c, i]
            sigma = 0.5 * (a * dx * dx + cc * dy * dy) + b * dx * dy
            alpha = torch.clamp(opacities[i] * torch.exp(-sigma), max=0.999)
            use = (alpha >= 1 / 255) & ~done
            next_T = T * (1 - alpha)
            done = done | (use & (next_T <= 1e-4))
            use = use & (next_T > 1e-4)
            w = torch.where(use, alpha * T, torch.zeros_like(T))
            image = image + w[:, None] * colors[i]
            w_all[i] = w
            T = torch.where(use, next_T, T)
        if backgrounds is not None:
            image = image + T[:, None] * backgrounds[c]
        images.append(image.reshape(height, width, -1))
        alphas.append((1 - T).reshape(height, width, 1))
        weights.append(w_all)
    return torch.stack(images), torch.stack(alphas), torch.stack(weights)


@pytest.mark.parametrize("shape", ["round", "needles", "opaque"])
def test_matches_dense_reference_with_several_tiles_and_cameras(shape):
    args = scene(40, seed=1, cameras=2)
    if shape == "needles":  # long thin rotated ellipses: the tile culling must keep every reached tile
        args[2].mul_(torch.tensor([3.0, 0.15, 0.2], dtype=torch.float64))
        args[3].clamp_(min=0.9)  # reaches the 0.999 clamp
    elif shape == "opaque":  # big, nearly opaque: ~200 of the 782 pixels stop at T <= 1e-4
        args[2].mul_(2.0)
        args[3].clamp_(min=0.99)
    bg = torch.tensor([[0.2, 0.3, 0.4], [1.0, 0.0, 0.5]], dtype=torch.float64)
    ref_img, ref_alpha, ref_w = dense_reference(*args, 23, 17, backgrounds=bg)
    img, alpha, info = rasterize(*args, 23, 17, backgrounds=bg, tile_size=4, with_stats=True)
    assert img.shape == (2, 17, 23, 3) and alpha.shape == (2, 17, 23, 1)
    assert info["n_isects"] > 40 and ref_alpha.max() > 0.9  # overlapping footprints over many tiles
    torch.testing.assert_close(img, ref_img, atol=1e-6, rtol=0)
    torch.testing.assert_close(alpha, ref_alpha, atol=1e-6, rtol=0)
    torch.testing.assert_close(info["sum_weight"], ref_w.sum(-1), atol=1e-6, rtol=0)
    torch.testing.assert_close(info["max_weight"], ref_w.amax(-1), atol=1e-6, rtol=0)
    assert torch.equal(info["hits"], (ref_w > 0).sum(-1).to(torch.int32))


@pytest.mark.parametrize("opaque", [False, True])
def test_gradients_match_autograd_through_dense_reference(opaque):
    base = list(scene(30, seed=8, cameras=2))
    if opaque:
        base[2].mul_(2.0)
        base[3].clamp_(min=0.99)
    bg = torch.tensor([[0.2, 0.3, 0.4], [0.5, 0.5, 0.5]], dtype=torch.float64)
    weights = torch.rand(2, 17, 23, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    grads = []
    for fn in (lambda *a: rasterize(*a, 23, 17, backgrounds=bg)[:2], lambda *a: dense_reference(*a, 23, 17, bg)[:2]):
        params = [t.clone().requires_grad_() for t in base[:5]]
        img, alpha = fn(*params, *base[5:])
        ((img * weights).sum() + alpha.sum()).backward()
        grads.append([p.grad for p in params])
    for ours, ref in zip(*grads):
        torch.testing.assert_close(ours, ref, atol=1e-8, rtol=1e-6)


def test_tile_sizes_give_identical_images():
    args = scene(60, seed=2, dtype=torch.float32, width=37, height=29)
    outs = [rasterize(*args, 37, 29, tile_size=t)[:2] for t in (4, 8, 16)]
    for img, alpha in outs[1:]:
        torch.testing.assert_close(img, outs[0][0], atol=1e-6, rtol=0)
        torch.testing.assert_close(alpha, outs[0][1], atol=1e-6, rtol=0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_projection_agrees_with_gsplat_torch_projection(seed):
    means, quats, scales, opacities, colors, viewmats, Ks = scene(400, seed=seed, dtype=torch.float32, cameras=2,
                                                                  width=100, height=80, scale=0.05)
    means = means * 1.6  # some Gaussians off-screen
    _, _, info = rasterize(means, quats, scales, opacities, colors, viewmats, Ks, 100, 80)
    covars, _ = _quat_scale_to_covar_preci(quats, scales, True, False)
    radii, means2d, depths, conics, _ = _fully_fused_projection(means, covars, viewmats, Ks, 100, 80)
    vis = (info["radii"] > 0).all(-1)
    assert vis.sum() > 400 and not vis.all()
    assert bool(((radii > 0).all(-1) | ~vis).all())  # we render a subset of what gsplat keeps
    assert bool((info["radii"] <= radii).all())  # opacity-aware boxes are never larger
    torch.testing.assert_close(info["means2d"][vis], means2d[vis], atol=1e-5, rtol=0)
    torch.testing.assert_close(info["conics"][vis], conics[vis], atol=1e-5, rtol=0)
    torch.testing.assert_close(info["depths"], depths, atol=1e-5, rtol=0)


def _two_gaussians():
    means = torch.tensor([[0.05, -0.02, 0.1], [-0.1, 0.08, -0.2]], dtype=torch.float64)
    quats = torch.tensor([[0.9, 0.1, -0.2, 0.3], [0.5, -0.4, 0.3, 0.2]], dtype=torch.float64)
    scales = torch.tensor([[0.15, 0.08, 0.1], [0.09, 0.2, 0.12]], dtype=torch.float64)
    opacities = torch.tensor([0.7, 0.85], dtype=torch.float64)
    colors = torch.tensor([[0.9, 0.2, 0.1], [0.1, 0.6, 0.8]], dtype=torch.float64)
    viewmats = torch.eye(4, dtype=torch.float64)[None].clone()
    viewmats[0, 2, 3] = 2.0
    Ks = torch.tensor([[[14.0, 0, 6.1], [0, 14.0, 5.9], [0, 0, 1]]], dtype=torch.float64)
    return means, quats, scales, opacities, colors, viewmats, Ks


def test_gradients_match_finite_differences():
    means, quats, scales, opacities, colors, viewmats, Ks = _two_gaussians()
    bg = torch.tensor([[0.3, 0.3, 0.3]], dtype=torch.float64)

    probes = torch.randn(3, 12, 12, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def f(means, quats, scales, opacities, colors):  # 3 random projections of image and alpha: 3 backward passes
        img, alpha, _ = rasterize(means, quats, scales, opacities, colors, viewmats, Ks, 12, 12, backgrounds=bg)
        return (torch.cat([img, alpha], -1) * probes).sum((1, 2, 3))

    inputs = [t.clone().requires_grad_() for t in (means, quats, scales, opacities, colors)]
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6, rtol=1e-4)


def test_means2d_gradient_is_retained_and_matches_finite_differences(monkeypatch):
    means, quats, scales, opacities, colors, viewmats, Ks = _two_gaussians()
    project = render_module.project_gaussians
    delta = torch.zeros(1, 2, 2, dtype=torch.float64, requires_grad=True)

    def shifted(*args, **kwargs):
        means2d, conics, depths, radii = project(*args, **kwargs)
        return means2d + delta, conics, depths, radii

    monkeypatch.setattr(render_module, "project_gaussians", shifted)
    weights = torch.linspace(0.5, 1.5, 12 * 12 * 3, dtype=torch.float64).reshape(1, 12, 12, 3)
    img, _, info = rasterize(means, quats, scales, opacities, colors, viewmats, Ks, 12, 12)
    (img * weights).sum().backward()
    assert info["means2d"].grad is not None and info["means2d"].grad.abs().sum() > 0
    torch.testing.assert_close(info["means2d"].grad, delta.grad)

    def f(d):
        delta.data.copy_(d)
        return (rasterize(means, quats, scales, opacities, colors, viewmats, Ks, 12, 12)[0] * weights).sum()

    with torch.no_grad():
        for k in range(4):
            e = torch.zeros(4, dtype=torch.float64)
            e[k] = 1e-6
            fd = (f(e.reshape(1, 2, 2)) - f(-e.reshape(1, 2, 2))) / 2e-6
            assert abs(float(fd) - float(info["means2d"].grad.reshape(-1)[k])) < 1e-5


def test_absgrad_sums_per_pixel_absolute_gradients():
    means, quats, scales, opacities, colors, viewmats, Ks = _two_gaussians()
    weights = torch.randn(1, 12, 12, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    img, _, info = rasterize(means.requires_grad_(), quats, scales, opacities, colors, viewmats, Ks, 12, 12,
                             absgrad=True)
    (img * weights).sum().backward(retain_graph=True)
    absgrad = info["means2d"].absgrad.clone()  # every backward pass sets it anew, as in gsplat
    per_pixel = torch.zeros_like(info["means2d"])
    for y in range(12):
        for x in range(12):
            (g,) = torch.autograd.grad((img[0, y, x] * weights[0, y, x]).sum(), info["means2d"], retain_graph=True)
            per_pixel += g.abs()
    torch.testing.assert_close(absgrad, per_pixel, atol=1e-10, rtol=1e-8)
    assert bool((absgrad > info["means2d"].grad.abs() + 1e-6).any())


def test_gaussian_behind_camera_or_off_image_contributes_nothing():
    means, quats, scales, opacities, colors, viewmats, Ks = _two_gaussians()
    # behind the camera, at the eye, far aside
    extra = torch.tensor([[0.0, 0.0, -2.5], [0.0, 0.0, -2.0], [40.0, 0.0, 0.0]], dtype=torch.float64)
    all_means = torch.cat([means, extra]).requires_grad_()
    all_args = [torch.cat([t, t[:1].expand(3, *t.shape[1:])]) for t in (quats, scales, opacities, colors)]
    img, alpha, info = rasterize(all_means, *all_args, viewmats, Ks, 12, 12)
    ref_img, ref_alpha, _ = rasterize(means, quats, scales, opacities, colors, viewmats, Ks, 12, 12)
    assert info["radii"][0, 2:].eq(0).all() and info["radii"][0, :2].gt(0).all()
    torch.testing.assert_close(img, ref_img, atol=1e-12, rtol=0)
    img.sum().backward()
    assert torch.isfinite(all_means.grad).all() and all_means.grad[2:].eq(0).all()


def test_empty_and_invisible_scenes_render_background():
    _, _, _, _, _, viewmats, Ks = _two_gaussians()
    bg = torch.tensor([[0.1, 0.2, 0.3]], dtype=torch.float64)
    for n, z in ((0, 0.0), (3, -5.0)):
        means = torch.zeros(n, 3, dtype=torch.float64)
        means[:, 2] = z
        params = [means, torch.tensor([[1.0, 0, 0, 0]] * n, dtype=torch.float64).reshape(n, 4),
                  torch.full((n, 3), 0.1, dtype=torch.float64), torch.full((n,), 0.5, dtype=torch.float64),
                  torch.rand(n, 3, dtype=torch.float64)]
        params = [p.requires_grad_() for p in params]
        img, alpha, info = rasterize(*params, viewmats, Ks, 12, 12, backgrounds=bg, with_stats=True)
        assert torch.equal(img, bg[:, None, None, :].expand(1, 12, 12, 3)) and alpha.eq(0).all()
        assert info["radii"].shape == (1, n, 2) and info["hits"].shape == (1, n) and info["n_isects"] == 0
        img.sum().backward()
        assert all(p.grad is None or p.grad.eq(0).all() for p in params)


def test_several_cameras_equal_one_at_a_time():
    args = list(scene(30, seed=3, dtype=torch.float64, cameras=3))
    img, alpha, info = rasterize(*args, 23, 17)
    for c in range(3):
        one = rasterize(*args[:5], args[5][c:c + 1], args[6][c:c + 1], 23, 17)
        torch.testing.assert_close(img[c:c + 1], one[0], atol=1e-12, rtol=0)
        torch.testing.assert_close(info["means2d"][c:c + 1], one[2]["means2d"])


def test_render_modes_and_sh_colours():
    means, quats, scales, opacities, colors, viewmats, Ks = scene(30, seed=4, cameras=2)
    rgb, alpha, info = rasterize(means, quats, scales, opacities, colors, viewmats, Ks, 23, 17)
    rgbd, _, _ = rasterize(means, quats, scales, opacities, colors, viewmats, Ks, 23, 17, render_mode="RGB+D")
    ed, _, _ = rasterize(means, quats, scales, opacities, colors, viewmats, Ks, 23, 17, render_mode="ED")
    depth_colors = info["depths"][..., None]  # per-camera colours [C, N, 1]
    d_ref, _, _ = rasterize(means, quats, scales, opacities, depth_colors, viewmats, Ks, 23, 17)
    torch.testing.assert_close(rgbd[..., :3], rgb)
    torch.testing.assert_close(rgbd[..., 3:], d_ref)
    torch.testing.assert_close(ed, d_ref / alpha.clamp_min(1e-10))

    sh = torch.zeros(30, 4, 3, dtype=torch.float64)
    sh[:, 0] = (colors - 0.5) / 0.28209479177387814  # degree 0 reproduces the plain colours
    sh[:, 1:] = 0.3 * torch.randn(30, 3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sh0, _, _ = rasterize(means, quats, scales, opacities, sh, viewmats, Ks, 23, 17, sh_degree=0)
    torch.testing.assert_close(sh0, rgb)
    sh1, _, _ = rasterize(means, quats, scales, opacities, sh, viewmats, Ks, 23, 17, sh_degree=1)
    assert not torch.allclose(sh1, rgb)


def test_loss_map_statistics_match_dense_reference():
    args = scene(25, seed=5)
    loss_map = torch.rand(1, 17, 23, 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    _, _, info = rasterize(*args, 23, 17, with_stats=True, loss_map=loss_map)
    _, _, ref_w = dense_reference(*args, 23, 17)
    flat = loss_map.reshape(1, 1, -1)
    torch.testing.assert_close(info["loss_weight"], (ref_w * flat).sum(-1), atol=1e-9, rtol=0)
    torch.testing.assert_close(info["loss_hits"], ((ref_w > 0) * flat).sum(-1), atol=1e-9, rtol=0)
    assert info["loss_hits"].sum() > 0


@pytest.mark.parametrize("absgrad", [False, True])
def test_default_strategy_densifies_and_prunes_with_our_info(absgrad):
    torch.manual_seed(0)
    means, quats, scales, opacities, colors, viewmats, Ks = scene(150, seed=6, dtype=torch.float32, cameras=2,
                                                                  width=32, height=24, scale=0.08)
    opacities[:10] = 0.003  # below prune_opa: pruned at the first refinement
    params = torch.nn.ParameterDict({
        "means": means, "quats": quats, "scales": torch.log(scales),
        "opacities": torch.logit(opacities), "colors": colors})
    optimizers = {k: torch.optim.Adam([{"params": v, "lr": 1e-3, "name": k}]) for k, v in params.items()}
    strategy = DefaultStrategy(refine_start_iter=1, refine_every=2, grow_grad2d=1e-7, reset_every=1000,
                               absgrad=absgrad)
    strategy.check_sanity(params, optimizers)
    state = strategy.initialize_state(scene_scale=1.0)
    target = torch.rand(2, 24, 32, 3)
    sizes = []
    for step in range(5):
        img, _, info = render(params["means"], params["quats"], torch.exp(params["scales"]),
                              torch.sigmoid(params["opacities"]), params["colors"], viewmats, Ks, 32, 24,
                              absgrad=absgrad)
        assert info["radii"].shape == (2, len(params["means"]), 2) and info["gaussian_ids"] is None
        strategy.step_pre_backward(params, optimizers, state, step, info)
        (img - target).abs().mean().backward()
        strategy.step_post_backward(params, optimizers, state, step, info)
        for opt in optimizers.values():
            opt.step()
            opt.zero_grad(set_to_none=True)
        sizes.append(len(params["means"]))
    assert sizes[0] == 150 and sizes[2] > 150  # step 2 refines: 10 pruned, many grown
    assert torch.isfinite(params["means"]).all() and state["grad2d"].shape == (sizes[-1],)


def _bad(name):
    means, quats, scales, opacities, colors, viewmats, Ks = _two_gaussians()
    kw = dict(means=means, quats=quats, scales=scales, opacities=opacities, colors=colors, viewmats=viewmats, Ks=Ks,
              width=12, height=12)
    if name == "n_mismatch":
        kw["scales"] = scales[:1]
    elif name == "viewmats_shape":
        kw["viewmats"] = viewmats[0]
    elif name == "ks_cameras":
        kw["Ks"] = Ks.expand(2, 3, 3)
    elif name == "nan":
        kw["means"] = means.clone()
        kw["means"][0, 0] = float("nan")
    elif name == "inf_opacity":
        kw["opacities"] = torch.tensor([0.5, float("inf")], dtype=torch.float64)
    elif name == "width":
        kw["width"] = 0
    elif name == "tile_size":
        kw["tile_size"] = 0
    elif name == "render_mode":
        kw["render_mode"] = "RGBD"
    elif name == "sh_too_few":
        kw["colors"] = torch.zeros(2, 3, 3, dtype=torch.float64)
        kw["sh_degree"] = 1
    elif name == "backgrounds":
        kw["backgrounds"] = torch.zeros(1, 4, dtype=torch.float64)
    elif name == "dtype":
        kw["colors"] = colors.float()
    elif name == "loss_map_without_stats":
        kw["loss_map"] = torch.zeros(1, 12, 12, dtype=torch.float64)
    return kw


@pytest.mark.parametrize("name", ["n_mismatch", "viewmats_shape", "ks_cameras", "nan", "inf_opacity", "width",
                                  "tile_size", "render_mode", "sh_too_few", "backgrounds", "dtype",
                                  "loss_map_without_stats"])
def test_bad_input_raises_value_error(name):
    kw = _bad(name)
    with pytest.raises(ValueError):
        rasterize(**kw)


def test_render_dispatch():
    args = _two_gaussians()
    torch.testing.assert_close(render(*args, 12, 12)[0], rasterize(*args, 12, 12)[0])
    with pytest.raises(ValueError, match="backend"):
        render(*args, 12, 12, backend="cuda")
    with pytest.raises(ValueError, match="CUDA"):
        render(*args, 12, 12, backend="gsplat")
    with pytest.raises(ValueError, match="packed"):
        render(*args, 12, 12, packed=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_matches_gsplat_cuda_rasterization():
    args = [t.float().cuda() for t in scene(300, seed=7, cameras=2, width=64, height=48, scale=0.08)]
    ours, ours_alpha, ours_info = rasterize(*args, 64, 48)
    theirs, theirs_alpha, theirs_info = render(*args, 64, 48, backend="gsplat")
    assert (ours_info["radii"] - theirs_info["radii"]).abs().max() <= 1  # ceil() of float32 boxes
    assert (ours - theirs).abs().mean() < 1e-5 and (ours - theirs).abs().max() < 1e-3
    assert (ours_alpha - theirs_alpha).abs().max() < 1e-3
