"""The engine wing: a run's long-lived engines, shared by its stages through handles (ray-project/ray #52277 asks
the same of ray.data.llm): a pool of sampling engine actors per model folder, and one Ray Serve application per
served app (a judge panel, a reward model, a rule scorer: anything of the ``ServedApp`` shape). Stages still stream
their batches through Ray Data: light tasks hand each batch to an engine or an app.

A stage asks the wing for what it needs when it runs, never before (a stage skipped on a resume asks nothing):
``samplers`` for a model's pool, ``app`` for a served app, and a training stage ``before_training`` for room. The
first ask builds an engine, later asks reuse it. A recipe says at most which engines stay up between stages
(``keep_only``: ALMA gives back the base model's pool after round 0, an earlier round's checkpoint once no mix
names it).

Room: on a GPU cluster a training takes the devices, so every engine is given back first (those ``keep`` names
stay, for a trainer that rolls out beside its engines). On CPU the engines stay while the machine has the CPUs and
the memory the training needs beside them (the local Ray instance reserves logical CPUs for them: they take turns
on the same cores; an idle engine costs memory, not CPU; a 270M model's training workers need about 7 GB each,
``alma_ray.placement.training_bytes``). New sampling engines and apps on CPU make room the same way
(``alma_ray.placement.engine_bytes``, engines still loading counted as loaded), or Ray's memory monitor kills one
and Ray restarts it, in a loop. On CPU a sampling engine given back is shut down but its process kept (a spare):
the next model's pool takes it over and loads the new checkpoint in seconds, where a new process spends about half
a minute importing vLLM. A live engine also takes new weights in place (``SamplingEngine.reload_weights``: the
policy's engines after each update of an RL step). ``close`` ends them all. A dead engine is restarted by Ray and
the batch it held retried; every request names the model it needs, so a restarted or taken-over engine loads the
right one.

Its parts, a file each: ``build`` (how a vLLM engine is built: its environment and Ray resources), ``sampler`` (the
sampling actor), ``apps`` (the served-app shape), ``host`` (this node's free memory and the cluster's free CPUs)
and ``registry`` (``Engines``: the pools and apps a run holds, and the give-back rules). Import each from its file
(``from alma_ray.engines.registry import Engines``): the package itself imports nothing, so a training worker that
needs ``build.prompt_ids`` does not import Serve.
"""
