# The two commands the README starts with, and the rest.
.PHONY: demo demo-istio lab lab-down test build images bench soak fuzz clean

## demo: a local two-cluster demo on loopback (real Envoys, the real filter)
demo:
	scripts/demo.sh

## demo-istio: the two-cluster demo under real Istio (API servers, istiod,
## pilot-agent-run proxies; the tools are built once and cached)
demo-istio:
	scripts/demo-istio.sh

## lab: the demo's two real-Istio clusters, left running: prints per cluster
## a KUBECONFIG= line, the metadata endpoint and the workloads; Ctrl-C or
## `make lab-down` stops it (scripts/lab.sh)
lab:
	scripts/lab.sh up

## lab-down: stops the running lab; checks no process or directory is left
lab-down:
	scripts/lab.sh down

## test: the whole test suite (installs Envoy and the wasm toolchain if missing)
test:
	scripts/test.sh

## build: the wasm32 filter and the native agent
build:
	scripts/bootstrap.sh
	scripts/build.sh

## images: the agent's container image and the filter's Wasm image, as OCI
## layouts in target/images (prints their digests; scripts/images.sh)
images:
	scripts/bootstrap.sh
	scripts/images.sh

## bench: benchmarks against native Envoy baselines; writes BENCHMARKS.md
bench:
	scripts/bench.sh

## soak: cluster A and 20 flapping peers for BENCH_SOAK_SECONDS (default 600);
## the agent's RSS, descriptors and threads sampled, slopes to BENCHMARKS.md
soak:
	scripts/bench.sh soak

## fuzz: every fuzz target for FUZZ_SECONDS (default 60) each, from its
## committed corpus; prints executions and coverage per target and writes
## docs/fuzzing-results.md (scripts/fuzz.sh; installs nightly and cargo-fuzz)
fuzz:
	scripts/fuzz.sh

clean:
	cargo clean
