"""Gaussian diffusion maths (Ho et al. 2020; Nichol & Dhariwal 2021). Nothing here calls a network.

Notation (paper symbol -> name):
  beta_t -> ``betas``;  alpha_bar_t -> ``alphas_cumprod``;  x_0 -> ``x_0``;  x_t -> ``x_t``;
  epsilon -> ``eps``;  q(x_{t-1} | x_t, x_0) = N(posterior mean, beta_tilde_t) -> ``q_posterior``;
  p(x_{t-1} | x_t) = N(mean, variance) predicted from the network output -> ``p_mean_variance``.

Tables are float64 (like the reference code); every gathered value is cast to float32 before it meets a
tensor, so results are float32 whatever the tables were computed in.

``t`` is always an int64 index into *this* (possibly respaced) process, shape (B,). The network sees
``model_timesteps(t)``: the original timestep (``timestep_map[t]``), as float ``* 1000 / T_orig`` when
``rescale_timesteps`` is set.
"""

from __future__ import annotations

import torch

from adm.diffusion import losses
from adm.diffusion.schedules import named_beta_schedule, respaced_betas
from adm.diffusion.spacing import Spacing
from adm.diffusion.types import LossType, ModelMeanType, ModelVarType, choose

__all__ = ["GaussianDiffusion", "ModelMeanType", "ModelVarType", "LossType"]


def _append(first: torch.Tensor, rest: torch.Tensor) -> torch.Tensor:
    return torch.cat([first.reshape(1), rest])


class GaussianDiffusion:
    """A (possibly respaced) Gaussian diffusion process.

    Build one from a named schedule with :meth:`from_schedule` (what ``conf/diffusion/*.yaml`` do).

    Args:
        betas: float64 (T,) noise schedule of this process.
        model_mean_type, model_var_type, loss_type: see the enums (members or their string values).
        rescale_timesteps: hand the network ``t * 1000 / T_orig`` as a float instead of the integer step.
        timestep_map: original timestep of each step of this process (None = 0..T-1).
        base_alphas_cumprod: alpha_bar of the original process (needed to respace again; None = this one's).
        schedule: name of the schedule the betas come from ("linear", "cosine"), if any; only used to
            describe the process (messages, ``repr``).
    """

    def __init__(
        self,
        *,
        betas: torch.Tensor,
        model_mean_type: ModelMeanType | str,
        model_var_type: ModelVarType | str,
        loss_type: LossType | str,
        rescale_timesteps: bool = False,
        timestep_map: torch.Tensor | list[int] | None = None,
        base_alphas_cumprod: torch.Tensor | None = None,
        schedule: str | None = None,
    ) -> None:
        self.model_mean_type = choose(ModelMeanType, model_mean_type, "mean_type")
        self.model_var_type = choose(ModelVarType, model_var_type, "var_type")
        self.loss_type = choose(LossType, loss_type, "loss_type")
        self.rescale_timesteps = bool(rescale_timesteps)
        self.schedule = schedule
        # Tables live on the CPU in float64 even under a `with torch.device("meta"):` block.
        with torch.device("cpu"):
            self._build_tables(betas, timestep_map, base_alphas_cumprod)
        self._device_tables: dict[torch.device, dict[str, torch.Tensor]] = {}

    @classmethod
    def from_schedule(
        cls,
        schedule: str,
        steps: int,
        *,
        mean_type: ModelMeanType | str,
        var_type: ModelVarType | str,
        loss_type: LossType | str,
        rescale_timesteps: bool,
    ) -> GaussianDiffusion:
        """The process of the named beta schedule over ``steps`` timesteps (``conf/diffusion/*.yaml``).

        Args:
            schedule: "linear" (Ho et al., scaled by 1000 / steps) or "cosine" (Nichol & Dhariwal).
            steps: T of the process (1000 for every released model); sampling respaces it.
            mean_type: what the network predicts: "epsilon", "start_x" or "previous_x".
            var_type: "learned_range" / "learned" (the network outputs the variance too: it must have
                ``learn_sigma``), "fixed_large" or "fixed_small".
            loss_type: "mse", "rescaled_mse" (the hybrid loss of improved DDPM), "kl" or "rescaled_kl".
            rescale_timesteps: hand the network ``t * 1000 / steps`` as a float.
        """
        return cls(
            betas=named_beta_schedule(schedule, steps),
            model_mean_type=mean_type,
            model_var_type=var_type,
            loss_type=loss_type,
            rescale_timesteps=rescale_timesteps,
            schedule=schedule,
        )

    def _build_tables(self, betas, timestep_map, base_alphas_cumprod) -> None:
        betas = torch.as_tensor(betas, dtype=torch.float64).flatten().cpu()
        if betas.numel() < 1 or not bool(((betas > 0) & (betas <= 1)).all()):
            raise ValueError("betas must be a non-empty 1-D array with values in (0, 1]")
        self.num_timesteps = int(betas.numel())

        alphas = 1.0 - betas
        abar = torch.cumprod(alphas, dim=0)
        abar_prev = _append(torch.ones((), dtype=torch.float64), abar[:-1])
        self.betas = betas
        self.log_betas = torch.log(betas)
        self.alphas_cumprod = abar
        self.alphas_cumprod_prev = abar_prev
        self.alphas_cumprod_next = torch.cat([abar[1:], torch.zeros(1, dtype=torch.float64)])
        self.sqrt_alphas_cumprod = torch.sqrt(abar)
        self.one_minus_alphas_cumprod = 1.0 - abar
        self.sqrt_one_minus_alphas_cumprod = torch.sqrt(1.0 - abar)
        self.log_one_minus_alphas_cumprod = torch.log(1.0 - abar)
        self.sqrt_recip_alphas_cumprod = torch.sqrt(1.0 / abar)
        self.sqrt_recipm1_alphas_cumprod = torch.sqrt(1.0 / abar - 1.0)
        # q(x_{t-1} | x_t, x_0) = N(coef1 * x_0 + coef2 * x_t, beta_tilde_t)
        self.posterior_variance = betas * (1.0 - abar_prev) / (1.0 - abar)
        # beta_tilde_0 = 0: its log is replaced by log beta_tilde_1 (the clip).
        if self.num_timesteps > 1:
            self.posterior_log_variance_clipped = torch.log(
                _append(self.posterior_variance[1], self.posterior_variance[1:])
            )
        else:
            self.posterior_log_variance_clipped = torch.log(betas.clone())
        self.posterior_mean_coef1 = betas * torch.sqrt(abar_prev) / (1.0 - abar)
        self.posterior_mean_coef2 = (1.0 - abar_prev) * torch.sqrt(alphas) / (1.0 - abar)
        self.recip_posterior_mean_coef1 = 1.0 / self.posterior_mean_coef1
        self.coef2_over_coef1 = self.posterior_mean_coef2 / self.posterior_mean_coef1
        # "Fixed large" variance is beta_t, except at t = 0 where beta_tilde_1 gives a better decoder.
        if self.num_timesteps > 1:
            self.fixed_large_variance = _append(self.posterior_variance[1], betas[1:])
        else:
            self.fixed_large_variance = betas.clone()
        self.fixed_large_log_variance = torch.log(self.fixed_large_variance)

        if timestep_map is None:
            timestep_map = torch.arange(self.num_timesteps)
        self.timestep_map = torch.as_tensor(timestep_map, dtype=torch.int64).flatten().cpu()
        if self.timestep_map.numel() != self.num_timesteps:
            raise ValueError(
                f"timestep_map has {self.timestep_map.numel()} entries for {self.num_timesteps} betas"
            )
        self.base_alphas_cumprod = abar if base_alphas_cumprod is None else base_alphas_cumprod.double().cpu()
        self.original_num_steps = int(self.base_alphas_cumprod.numel())

    # ------------------------------------------------------------------ utilities
    def __repr__(self) -> str:
        return (
            f"GaussianDiffusion(num_timesteps={self.num_timesteps}, "
            f"original_num_steps={self.original_num_steps}, "
            f"mean={self.model_mean_type.name}, var={self.model_var_type.name}, loss={self.loss_type.name}, "
            f"rescale_timesteps={self.rescale_timesteps}, schedule={self.schedule!r})"
        )

    @property
    def learn_sigma(self) -> bool:
        """True when the network also outputs the variance (output channels = 2 * image channels)."""
        return self.model_var_type.is_learned

    def describe_noising(self) -> str:
        """How this process noises images, e.g. "schedule=cosine steps=1000" (what a classifier learns)."""
        schedule = self.schedule if self.schedule is not None else "custom"
        text = f"schedule={schedule} steps={self.original_num_steps}"
        return text + (" rescale_timesteps=true" if self.rescale_timesteps else "")

    def same_noising(self, other: GaussianDiffusion) -> bool:
        """True when both processes noise images alike: the same original alpha_bar table and the same
        timesteps handed to networks (respacing aside)."""
        return (
            self.original_num_steps == other.original_num_steps
            and self.rescale_timesteps == other.rescale_timesteps
            and torch.allclose(self.base_alphas_cumprod, other.base_alphas_cumprod, rtol=1e-12, atol=0.0)
        )

    def _table(self, name: str, device: torch.device) -> torch.Tensor:
        if device.type == "cpu":
            return getattr(self, name)
        tables = self._device_tables.setdefault(device, {})
        if name not in tables:
            tables[name] = getattr(self, name).to(device)
        return tables[name]

    def extract(self, name: str, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Table ``name`` (e.g. "alphas_cumprod") at ``t`` (B,) as float32, shaped (B, 1, ..., 1)."""
        if t.device.type == "mps":  # no float64 there: gather on the CPU
            values = getattr(self, name)[t.cpu()].float().to(t.device)
        else:
            values = self._table(name, t.device)[t].float()
        return values.reshape(-1, *([1] * (like.ndim - 1)))

    def _check_t(self, t: torch.Tensor) -> None:
        if t.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"t must hold integer step indices (int64), got dtype {t.dtype}")

    def model_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        """The timesteps the network receives for step indices ``t`` (B,).

        The original timestep ``timestep_map[t]`` (int64), or ``timestep_map[t] * 1000 / T_orig`` as float32
        when ``rescale_timesteps`` is set. Classifiers used for guidance receive the same values.
        """
        mapped = self._table("timestep_map", t.device)[t]
        if self.rescale_timesteps:
            return mapped.float() * (1000.0 / self.original_num_steps)
        return mapped

    def respace(self, spacing: Spacing | int | None) -> GaussianDiffusion:
        """A process that keeps a subset of the ORIGINAL timesteps.

        ``spacing``: a :class:`~adm.diffusion.spacing.Spacing` (e.g. ``Spacing.strided(25)``), an int N
        (``Spacing.even(N)``) or None (all original steps). Respacing is always relative to the original
        process, so ``d.respace(50).respace(250)`` equals ``d.respace(250)``.
        """
        if spacing is None:
            kept = list(range(self.original_num_steps))
        else:
            kept = Spacing.of(spacing).timesteps(self.original_num_steps)
        return GaussianDiffusion(
            betas=respaced_betas(self.base_alphas_cumprod, kept),
            model_mean_type=self.model_mean_type,
            model_var_type=self.model_var_type,
            loss_type=self.loss_type,
            rescale_timesteps=self.rescale_timesteps,
            timestep_map=kept,
            base_alphas_cumprod=self.base_alphas_cumprod,
            schedule=self.schedule,
        )

    def split_model_output(
        self, model_output: torch.Tensor, x_t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(mean part (B,C,...), variance part (B,C,...) or None) of a network output."""
        channels = x_t.shape[1]
        if self.learn_sigma:
            if model_output.shape[1] != 2 * channels:
                raise ValueError(
                    f"this diffusion learns the variance, so the network must output {2 * channels} channels "
                    f"(2 x {channels}); it gave {model_output.shape[1]}. Check learn_sigma of both"
                )
            return model_output[:, :channels], model_output[:, channels:]
        if model_output.shape[1] != channels:
            raise ValueError(
                f"this diffusion has a fixed variance, so the network must output {channels} channels; "
                f"it gave {model_output.shape[1]}. Check learn_sigma of both"
            )
        return model_output, None

    # ------------------------------------------------------------------ forward process q
    def q_mean_variance(
        self, x_0: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean, variance, log variance of q(x_t | x_0) (each broadcastable to x_0's shape)."""
        mean = self.extract("sqrt_alphas_cumprod", t, x_0) * x_0
        variance = self.extract("one_minus_alphas_cumprod", t, x_0)
        log_variance = self.extract("log_one_minus_alphas_cumprod", t, x_0)
        return mean, variance.expand_as(x_0), log_variance.expand_as(x_0)

    def q_sample(self, x_0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps   (x_0, eps: (B,C,H,W); t: (B,))."""
        if eps.shape != x_0.shape:
            raise ValueError(f"eps has shape {tuple(eps.shape)}, x_0 has {tuple(x_0.shape)}; they must match")
        return (
            self.extract("sqrt_alphas_cumprod", t, x_0) * x_0
            + self.extract("sqrt_one_minus_alphas_cumprod", t, x_0) * eps
        )

    def q_posterior(
        self, x_0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean, variance and clipped log variance of q(x_{t-1} | x_t, x_0) (variance terms full-shape)."""
        mean = (
            self.extract("posterior_mean_coef1", t, x_t) * x_0
            + self.extract("posterior_mean_coef2", t, x_t) * x_t
        )
        variance = self.extract("posterior_variance", t, x_t).expand_as(x_t)
        log_variance = self.extract("posterior_log_variance_clipped", t, x_t).expand_as(x_t)
        return mean, variance, log_variance

    # ------------------------------------------------------------------ conversions between parametrisations
    def pred_x0_from_eps(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x_0 = (x_t - sqrt(1 - alpha_bar) eps) / sqrt(alpha_bar)."""
        return (
            self.extract("sqrt_recip_alphas_cumprod", t, x_t) * x_t
            - self.extract("sqrt_recipm1_alphas_cumprod", t, x_t) * eps
        )

    def eps_from_pred_x0(self, x_t: torch.Tensor, t: torch.Tensor, pred_x0: torch.Tensor) -> torch.Tensor:
        """eps = (x_t / sqrt(alpha_bar) - x_0) / sqrt(1 / alpha_bar - 1)."""
        return (self.extract("sqrt_recip_alphas_cumprod", t, x_t) * x_t - pred_x0) / self.extract(
            "sqrt_recipm1_alphas_cumprod", t, x_t
        )

    def pred_x0_from_x_prev(self, x_t: torch.Tensor, t: torch.Tensor, x_prev: torch.Tensor) -> torch.Tensor:
        """Invert the posterior mean: x_0 = (mu - coef2 x_t) / coef1."""
        return (
            self.extract("recip_posterior_mean_coef1", t, x_t) * x_prev
            - self.extract("coef2_over_coef1", t, x_t) * x_t
        )

    # ------------------------------------------------------------------ reverse process p
    def model_variance(
        self, var_output: torch.Tensor | None, x_t: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(variance, log variance) of p(x_{t-1} | x_t), full shape like ``x_t``."""
        if self.model_var_type == ModelVarType.LEARNED:
            log_variance = var_output
        elif self.model_var_type == ModelVarType.LEARNED_RANGE:
            # v in [-1, 1] interpolates in log space between beta_tilde_t (v = -1) and beta_t (v = +1).
            min_log = self.extract("posterior_log_variance_clipped", t, x_t)
            max_log = self.extract("log_betas", t, x_t)
            frac = (var_output + 1) / 2
            log_variance = frac * max_log + (1 - frac) * min_log
        elif self.model_var_type == ModelVarType.FIXED_LARGE:
            log_variance = self.extract("fixed_large_log_variance", t, x_t).expand_as(x_t)
            return self.extract("fixed_large_variance", t, x_t).expand_as(x_t), log_variance
        else:
            log_variance = self.extract("posterior_log_variance_clipped", t, x_t).expand_as(x_t)
            return self.extract("posterior_variance", t, x_t).expand_as(x_t), log_variance
        return torch.exp(log_variance), log_variance

    def p_mean_variance(
        self,
        model_output: torch.Tensor,
        x_t: torch.Tensor,
        t: torch.Tensor,
        clip_denoised: bool = True,
        denoised_fn=None,
    ) -> dict[str, torch.Tensor]:
        """Parameters of p(x_{t-1} | x_t) from a network output.

        Args:
            model_output: (B, C or 2C, H, W) network output at (x_t, model_timesteps(t)).
            x_t: (B, C, H, W); t: (B,) int64 step indices.
            clip_denoised: clamp the predicted x_0 to [-1, 1].
            denoised_fn: optional map applied to the predicted x_0 before clamping.
        Returns:
            dict with "mean", "variance", "log_variance" (full shape (B, C, H, W)) and "pred_x0" (the
            predicted x_0 after ``denoised_fn`` and clipping).
        """
        self._check_t(t)
        mean_output, var_output = self.split_model_output(model_output, x_t)
        variance, log_variance = self.model_variance(var_output, x_t, t)

        def process(x: torch.Tensor) -> torch.Tensor:
            if denoised_fn is not None:
                x = denoised_fn(x)
            return x.clamp(-1, 1) if clip_denoised else x

        if self.model_mean_type == ModelMeanType.PREVIOUS_X:
            pred_x0 = process(self.pred_x0_from_x_prev(x_t, t, mean_output))
            mean = mean_output
        else:
            if self.model_mean_type == ModelMeanType.START_X:
                pred_x0 = process(mean_output)
            else:
                pred_x0 = process(self.pred_x0_from_eps(x_t, t, mean_output))
            mean, _, _ = self.q_posterior(pred_x0, x_t, t)
        return {"mean": mean, "variance": variance, "log_variance": log_variance, "pred_x0": pred_x0}

    # ------------------------------------------------------------------ losses (delegated to losses.py)
    def training_losses(
        self,
        model_output: torch.Tensor,
        x_0: torch.Tensor,
        x_t: torch.Tensor,
        t: torch.Tensor,
        eps: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """Per-example losses {"loss", "mse", "vb"} (each (B,)); see ``losses.training_losses``."""
        return losses.training_losses(self, model_output, x_0, x_t, t, eps)

    def vb_terms_bpd(
        self,
        model_output: torch.Tensor,
        x_0: torch.Tensor,
        x_t: torch.Tensor,
        t: torch.Tensor,
        clip_denoised: bool = False,
    ) -> dict[str, torch.Tensor]:
        """L_{t} in bits/dim: {"output": (B,), "pred_x0"}; see ``losses.vb_terms_bpd``."""
        return losses.vb_terms_bpd(self, model_output, x_0, x_t, t, clip_denoised=clip_denoised)

    def prior_bpd(self, x_0: torch.Tensor) -> torch.Tensor:
        """KL(q(x_T | x_0) || N(0, I)) in bits/dim, (B,)."""
        return losses.prior_bpd(self, x_0)
