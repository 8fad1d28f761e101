# gondolin: `make run` builds everything (the default guest image included)
# and starts gondolin; `make test` runs every test, real VMs included.

GO        ?= go
BIN       := bin
GONDOLIN  := $(BIN)/gondolin
AGENT     := $(BIN)/gondolin-agent
GOSOURCES := $(shell find . -name '*.go' -not -path './.git/*') go.mod go.sum

.PHONY: all deps gondolin agent image run test hostile test-short stress bench fuzz lint clean

all: deps gondolin agent image

deps:
	@scripts/deps.sh

gondolin: $(GONDOLIN)
agent: $(AGENT)

$(GONDOLIN): $(GOSOURCES)
	$(GO) build -buildvcs=auto -o $@ ./cmd/gondolin

# The agent is the guest's PID 1: static, stripped, small.
$(AGENT): $(GOSOURCES)
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags='-s -w' -o $@ ./cmd/gondolin-agent

# Builds default:latest from Debian packages; a no-op when nothing changed.
image: $(GONDOLIN) $(AGENT)
	$(GONDOLIN) image build

run: all
	$(GONDOLIN)

# Integration tests boot real VMs from the default image; they fail
# (rather than skip) when it is missing. One package at a time (-p 1):
# two test binaries booting VMs on two cores only slow each other down;
# within a binary, tests share booted VMs and templates instead.
test: all
	@scripts/deps.sh --test
	$(GO) build ./... && $(GO) vet ./...
	GONDOLIN_TEST_REQUIRE_VM=1 $(GO) test -count=1 -p 1 -timeout 30m ./...

# Builds templates in ten fresh homes beside a CPU hog and restores three
# clones of each: every clone must answer. CI runs it after make test.
stress: all
	GONDOLIN_TEST_REQUIRE_VM=1 GONDOLIN_TEST_STRESS=1 $(GO) test -count=1 -run 'TestTemplateStress' -v -timeout 20m ./vm

# The hostile-guest suite: attacks written from the guest's side (a
# script run as root in a real VM where the attack needs one), one
# TestHostile* test per hole. make test (and so CI) runs them too.
hostile: all
	GONDOLIN_TEST_REQUIRE_VM=1 $(GO) test -count=1 -p 1 -run 'Hostile' -timeout 20m ./...

# Unit tests only: no VM, no image.
test-short:
	$(GO) test -short -count=1 ./...

bench: all
	$(GO) run ./bench

# Runs every fuzz target for FUZZTIME each (default 10s).
fuzz:
	scripts/fuzz.sh

lint:
	gofmt -l . | (! grep .)
	$(GO) vet ./...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@latest ./...

clean:
	rm -rf $(BIN)
