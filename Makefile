# The two commands of the README: `make dev` runs the platform, `make test` runs every check.
# Both set up everything they need on a fresh clone (uv, the locked dependencies, helm).

UV := ./scripts/uv
PORT ?= 8000
MAIL_DIR ?= .dev/mail
# The broker of `make dev`: tansu (in memory, starts in a second) or kafka (Apache Kafka, installed by `make tools`).
BROKER ?= tansu

.PHONY: dev test sync tools kafka lint typecheck pytest image

sync:
	$(UV) sync --frozen

tools:
	./scripts/ensure-tools.sh

# Apache Kafka alone (the part of `make tools` that `make dev BROKER=kafka` needs; seconds, not the
# quarter of an hour kube-apiserver takes to build).
kafka:
	./scripts/tools/kafka.sh

# The Dockerfile built with Docker where an engine answers, else with buildah; the last line is the image name.
image:
	@./scripts/build-image.sh

dev: sync $(if $(filter kafka,$(BROKER)),kafka)
	$(UV) run healingwork dev --port $(PORT) --mail-dir $(MAIL_DIR) --broker $(BROKER)

lint: sync
	$(UV) run ruff check .
	$(UV) run ruff format --check .
	$(UV) run hadolint Dockerfile
	$(UV) run lint-imports

typecheck: sync
	$(UV) run mypy

pytest: sync tools
	$(UV) run pytest -q

test: lint typecheck pytest
