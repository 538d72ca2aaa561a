# The two commands: `make run` and `make test`. See README.md.
SHELL := /bin/bash
LISTEN ?= 127.0.0.1:8000
DATA ?= ./data

.PHONY: all run test deps deps-test build build-san build-fuzz clean format tidy fuzz bench

all: build

deps:
	@scripts/install-deps

deps-test:
	@scripts/install-deps --test

build/build.ninja:
	meson setup build --buildtype=release -Dallocator=glibc >/dev/null

build-san/build.ninja:
	meson setup build-san --buildtype=debug -Db_sanitize=address,undefined -Db_lundef=false >/dev/null

build: deps build/build.ninja
	@ninja -C build image-server >/dev/null || ninja -C build image-server

build-san: deps-test build-san/build.ninja
	@ninja -C build-san >/dev/null || ninja -C build-san

# libFuzzer targets (clang, ASan + UBSan): see fuzz/ and scripts/fuzz.
FUZZ_TARGETS := fuzz/fuzz_ops_parse fuzz/fuzz_job_json fuzz/fuzz_multipart fuzz/fuzz_transform

build-fuzz/build.ninja:
	CC=clang meson setup build-fuzz -Dfuzz=true --buildtype=debugoptimized -Db_sanitize=address,undefined -Db_lundef=false >/dev/null

build-fuzz: deps-test build-fuzz/build.ninja
	@ninja -C build-fuzz $(FUZZ_TARGETS) >/dev/null || ninja -C build-fuzz $(FUZZ_TARGETS)

# Every fuzzer for 10 minutes, one after the other (make test runs 20 s each).
fuzz: build-fuzz
	@scripts/fuzz 600

run: build
	@mkdir -p $(DATA)/blobs
	exec build/image-server serve --listen $(LISTEN) --database sqlite:$(DATA)/image-server.db --blobs fs:$(DATA)/blobs

# Every test, then one line "N passed, M failed".
test: deps-test build-san build build-fuzz
	@scripts/run-tests

format:
	clang-format -i $$(git ls-files 'src/*.c' 'src/*.h' 'tests/*.c' 'fuzz/*.c')

tidy: build-san
	clang-tidy -p build-san $$(git ls-files 'src/*.c')

clean:
	rm -rf build build-san build-fuzz
