"""A plain training loop driving a SparsityController, shared by the unit tests."""
import torch


def train_steps(model, opt, ctrl, steps, input_shape, start=1, seed=0):
    """Run optimizer steps ``start .. start+steps-1`` on random inputs (loss: mean square output)."""
    g = torch.Generator().manual_seed(seed)
    for step in range(start, start + steps):
        loss = model(torch.randn(*input_shape, generator=g)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        ctrl.before_optimizer_step(opt)
        opt.step()
        ctrl.after_optimizer_step(step)
