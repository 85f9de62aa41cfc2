# %% [markdown]
# # Fine-tuning recipes compared: LP-FT, full fine-tuning, linear probe
#
# `kerasft.finetune(..., recipe=...)` picks how the pretrained body is trained:
#
# - `"lp-ft"` (the default): train the head on the frozen body (`head_epochs`), then
#   unfreeze the body and train everything at `finetune_lr` (a tenth of `lr` by
#   default) with warmup and cosine decay (`epochs`).
# - `"full"`: everything trainable from the first step, with warmup and cosine decay.
# - `"head"`: a linear probe; the body stays frozen.
#
# Same pretrained MNIST CNN, same task (scikit-learn digits, 10 labels per class), same
# number of epochs for each recipe. Also a script: `python examples/strategies.py`.

# %%
import kerasft
from kerasft import datasets
from kerasft.cli import default_model_path

split = datasets.digits_few_shot(shots=10, seed=0)
model = kerasft.load_model(default_model_path())
budget = 12  # epochs per recipe

# %%
results = {}
for recipe in ("lp-ft", "full", "head"):
    if recipe == "lp-ft":
        kwargs = dict(head_epochs=4, epochs=budget - 4)
    else:
        kwargs = dict(epochs=budget)
    result = kerasft.finetune(
        model, (split.x_train, split.y_train), recipe=recipe, verbose=0, **kwargs
    )
    results[recipe] = result
    accuracy = result.evaluate((split.x_test, split.y_test))["accuracy"]
    trained = max(p.trainable_params for p in result.phases)
    print(
        f"{recipe:>6}: test accuracy {accuracy:.3f}, up to {trained:,} weights trained, "
        f"{sum(result.seconds.values()):.1f} s"
    )

# %% [markdown]
# ## Partial unfreezing
#
# `unfreeze=` chooses what the second phase of LP-FT trains: `"all"`, the top N
# weighted layers (an int), the top fraction of them (a float), or a regex over layer
# paths. With 80 training images, training only the top of the body is a useful middle
# ground.

# %%
top = kerasft.finetune(
    model, (split.x_train, split.y_train), head_epochs=4, epochs=budget - 4, unfreeze=2, verbose=0
)
accuracy = top.evaluate((split.x_test, split.y_test))["accuracy"]
print(
    f"lp-ft, top 2 weighted layers unfrozen: test accuracy {accuracy:.3f}, "
    f"{top.phases[-1].trainable_params:,} weights trained"
)

# %% [markdown]
# ## Curves of each recipe

# %%
# notebook: from IPython.display import Image, display

paths = [kerasft.plot_history(result, f"strategies_{name}.png") for name, result in results.items()]
print("wrote", ", ".join(paths))
# notebook: display(*[Image(filename=p) for p in paths])
