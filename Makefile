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

run: build
	@mkdir -p $(DATA)/blobs
	exec build/image-server serve --listen $(LISTEN) --database sqlite:$(DATA)/image-server.db --blobs fs:$(DATA)/blobs

# Every test, then one line "N passed, M failed".
test: deps-test build-san build
	@scripts/run-tests

format:
	clang-format -i $$(git ls-files 'src/*.c' 'src/*.h' 'tests/*.c' 'fuzz/*.c')

tidy: build-san
	clang-tidy -p build-san $$(git ls-files 'src/*.c')

clean:
	rm -rf build build-san build-fuzz
