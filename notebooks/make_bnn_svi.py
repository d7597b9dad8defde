"""Writes bnn_svi.ipynb (outputs stripped): python notebooks/make_bnn_svi.py"""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

CELLS = [
    ("md", """# Bayesian neural networks by SVI (NumPyro + Flax NNX)

`ctbayes.vi` turns any `flax.nnx` module into a BNN with priors chosen by parameter name,
fits it with NumPyro's SVI in compiled chunks (progress bar, validation, early stopping,
best-state restore), and evaluates the posterior predictive in memory-bounded chunks.
Worked examples: a Gamma concentration, two moons, a scikit-learn data set, and a
mean-field variational posterior over deep-image-prior weights."""),
    ("code", """import os

QUICK = os.environ.get("CTBAYES_QUICK", "0") == "1"  # tiny settings (the test sets this)
STEPS = 600 if QUICK else 5000
SAMPLES = 100 if QUICK else 400"""),
    ("code", """import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
from flax import nnx
from numpyro.infer import SVI

from ctbayes.vi import (MLP, TrainConfig, classification_metrics, classifier_model, fit,
                        make_guide, make_loss, name_prior, one_cycle_with_plateau, predict,
                        reliability_diagram)
from ctbayes.vi import datasets"""),
    ("md", """## 1. Gamma concentration

1000 draws of Gamma(alpha = 3.5, 1); prior alpha ~ HalfNormal(10); guide: log-normal
(a Normal pushed through exp). TraceMeanField_ELBO with 4 particles."""),
    ("code", """def gamma_model(x):
    alpha = numpyro.sample("alpha", dist.HalfNormal(10.0))
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("x", dist.Gamma(alpha, 1.0), obs=x)


def gamma_guide(x):
    loc = numpyro.param("loc", 0.0)
    scale = numpyro.param("scale", 0.5, constraint=dist.constraints.positive)
    numpyro.sample("alpha", dist.TransformedDistribution(dist.Normal(loc, scale),
                                                         dist.transforms.ExpTransform()))


x = jax.random.gamma(jax.random.key(0), 3.5, (1000,))
svi = SVI(gamma_model, gamma_guide, optax.adam(0.05), make_loss("meanfield", 4))
gamma_fit = fit(svi, jax.random.key(1), x, config=TrainConfig(steps=max(STEPS, 1000), chunk=500))
alpha_mean = float(np.exp(gamma_fit.params["loc"] + gamma_fit.params["scale"] ** 2 / 2))
print(f"posterior mean of alpha: {alpha_mean:.3f} (true 3.5, error {abs(alpha_mean / 3.5 - 1):.1%})")"""),
    ("md", """## 2. Two moons

MLP with hidden layers [4, 3], tanh, sigmoid output, Bernoulli likelihood; Normal priors on
the biases and SoftLaplace on the kernels (by name); AutoNormal guide; minibatches of 64
through a subsampled plate; one-cycle learning rate chained with reduce-on-plateau;
early stopping on the validation predictive NLL."""),
    ("code", """xm, ym = datasets.two_moons(600, noise=0.1, seed=0)
moons = datasets.split(xm, ym, seed=0, standardise=False)
prior = name_prior({"bias$": dist.Normal(0.0, 1.0), "kernel$": dist.SoftLaplace(0.0, 1.0)})
model = classifier_model(MLP(2, [4, 3], 1, activation="tanh", rngs=nnx.Rngs(0)), prior)
guide = make_guide(model, "normal")
svi = SVI(model, guide, one_cycle_with_plateau(STEPS, 3e-2), make_loss("trace", 1))
moons_fit = fit(svi, jax.random.key(0), moons.x_train, moons.y_train, batch_size=64,
                config=TrainConfig(steps=STEPS, chunk=200, patience=5),
                validation=(moons.x_val, moons.y_val))
probs = predict(model, guide, moons_fit.params, moons.x_test, jax.random.key(1),
                num_samples=SAMPLES)
print(classification_metrics(probs.mean(0), moons.y_test), "best step", moons_fit.best_step)"""),
    ("code", """g = np.linspace(-4, 5, 60 if QUICK else 150, dtype=np.float32)
gx, gy = np.meshgrid(g, g - 0.25)
grid = np.stack([gx.ravel(), gy.ravel()], 1)
p = predict(model, guide, moons_fit.params, grid, jax.random.key(2), num_samples=SAMPLES)
fig, axes = plt.subplots(1, 3, figsize=(14, 4))
for ax, field, title in [(axes[0], p.mean(0), "predictive mean"), (axes[1], p.std(0), "predictive std")]:
    im = ax.pcolormesh(gx, gy, field.reshape(gx.shape), shading="auto")
    ax.scatter(*moons.x_train.T, c=moons.y_train, s=4, cmap="coolwarm", edgecolors="none")
    ax.set_title(title)
    fig.colorbar(im, ax=ax)
reliability_diagram(probs.mean(0), moons.y_test, ax=axes[2], label="two moons")
axes[2].figure.tight_layout()"""),
    ("code", """plt.figure(figsize=(5, 3))
plt.plot(moons_fit.losses, lw=0.5, label="train (-ELBO)")
plt.twinx().plot(moons_fit.val_steps, moons_fit.val_losses, "o-", color="C1", label="validation NLL")
plt.title("training");"""),
    ("md", """## 3. Real data: breast cancer (scikit-learn), MAP vs AutoNormal vs low rank

Test split; accuracy, ROC AUC, NLL, ECE of the posterior predictive mean."""),
    ("code", """try:
    cancer = datasets.load_sklearn("breast_cancer", seed=0)
except ImportError as error:
    cancer = None
    print(error)
if cancer is not None:
    bc_model = classifier_model(MLP(30, [8], 1, rngs=nnx.Rngs(0)),
                                name_prior({"bias$": dist.Normal(0.0, 1.0),
                                            "kernel$": dist.Normal(0.0, 0.5)}))
    fig, ax = plt.subplots(figsize=(4, 4))
    for kind in ("delta", "normal", "lowrank"):
        bc_guide = make_guide(bc_model, kind)
        bc_svi = SVI(bc_model, bc_guide, optax.adam(1e-2), make_loss("trace", 1))
        bc_fit = fit(bc_svi, jax.random.key(0), cancer.x_train, cancer.y_train,
                     config=TrainConfig(steps=STEPS, chunk=500, patience=4),
                     validation=(cancer.x_val, cancer.y_val))
        bc_probs = predict(bc_model, bc_guide, bc_fit.params, cancer.x_test, jax.random.key(1),
                           num_samples=SAMPLES).mean(0)
        metrics = classification_metrics(bc_probs, cancer.y_test)
        print(f"{kind:8s}", {k: round(v, 4) for k, v in metrics.items()})
        reliability_diagram(bc_probs, cancer.y_test, ax=ax, label=kind)"""),
    ("md", """## 4. A variational posterior over deep-image-prior weights

Mean-field Gaussian over the U-Net weights, initialised at the fitted DIP (mean theta*,
std from the linearised model), Gaussian likelihood with the DIP's residual variance,
prior centred at theta*. It answers the posterior interface (`mean`, `sample`, `std`,
`predictive_samples`)."""),
    ("code", """from ctbayes.dip.fit import DIPConfig, fit_dip
from ctbayes.operators import make_ray_transform
from ctbayes.phantoms import shepp_logan
from ctbayes.simulate import default_geometry
from ctbayes.posteriors.mfvi import MFVIConfig, mfvi_posterior

n = 32 if QUICK else 64
A = make_ray_transform(default_geometry(n, views=20))
truth = np.asarray(shepp_logan(n), np.float32)
clean = np.asarray(A(truth))
y = clean + 0.03 * np.abs(clean).mean() * np.random.default_rng(0).standard_normal(clean.shape).astype(np.float32)
dip_config = (DIPConfig(iterations=100, channels=(8, 16, 16), skip_channels=(0, 2, 2), warm_start=False)
              if QUICK else DIPConfig(iterations=1000))
dip = fit_dip(A, y, dip_config)
posterior = mfvi_posterior(dip, A, y, samples=16 if QUICK else 64, seed=0,
                           config=MFVIConfig(iterations=30, chunk=30) if QUICK else None)
std = np.asarray(posterior.std())
fig, axes = plt.subplots(1, 4, figsize=(14, 3.2))
for ax, img, title in [(axes[0], truth, "truth"), (axes[1], posterior.mean(), "MFVI mean"),
                       (axes[2], np.abs(posterior.mean() - truth), "|error|"), (axes[3], std, "MFVI std")]:
    fig.colorbar(ax.imshow(np.asarray(img), cmap="gray"), ax=ax)
    ax.set_title(title)
    ax.axis("off")
print("noise variance", posterior.noise_variance, "mean std", std.mean())"""),
]


def main():
    nb = new_notebook()
    nb.cells = [new_markdown_cell(src) if kind == "md" else new_code_cell(src) for kind, src in CELLS]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = Path(__file__).with_name("bnn_svi.ipynb")
    nbformat.write(nb, path)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
