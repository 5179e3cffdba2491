# The commands a new user needs (see README.md):
#   sudo make run    install what ocid needs and run it in the foreground with its defaults
#   sudo make test   install the same plus the test dependencies and run the whole suite
#   sudo make bench  install containerd too and run the benchmarks (benchmarks/README.md)
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PREFIX ?= /usr/local
OCID_FLAGS ?=
PYTEST_FLAGS ?=

# What ocid drives at run time (runtimes, monitor, pause, CNI plugins, iptables for portmap).
RUNTIME_PACKAGES := python3 python3-venv runc crun conmon catatonit containernetworking-plugins iptables
# What the tests use besides: a static busybox to build images, a local registry, skopeo, man page lint.
TEST_PACKAGES := busybox-static docker-registry skopeo mandoc man-db bash-completion
# What the benchmarks use: the test images and registry, and containerd as the reference runtime.
BENCH_PACKAGES := busybox-static docker-registry skopeo containerd
BENCH_FLAGS ?=

.PHONY: run test bench deps test-deps bench-deps venv test-venv install man completions clean

deps:
	@hack/apt-ensure $(RUNTIME_PACKAGES)

test-deps: deps
	@hack/apt-ensure $(TEST_PACKAGES)

bench-deps: deps
	@hack/apt-ensure $(BENCH_PACKAGES)

$(VENV)/.stamp-run: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e .
	touch $@

$(VENV)/.stamp-test: pyproject.toml $(VENV)/.stamp-run
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.stamp-run
test-venv: $(VENV)/.stamp-test

run: deps venv
	@hack/install-cni-config contrib/cni/10-ocid-bridge.conflist /etc/cni/net.d
	exec $(VENV)/bin/ocid $(OCID_FLAGS)

test: test-deps test-venv
	$(VENV)/bin/pytest $(PYTEST_FLAGS)

# ocid next to containerd's CRI plugin (benchmarks/cri.py; BENCH_FLAGS="--quick" for a smoke
# test), then the cold-pull benchmark against skopeo. Results go to benchmarks/results/.
bench: bench-deps test-venv
	$(VENV)/bin/python benchmarks/cri.py $(BENCH_FLAGS)
	$(VENV)/bin/python benchmarks/pull.py

# Regenerate the man pages and bash completions from the click command tree and the config definition.
man completions: test-venv
	$(VENV)/bin/python hack/gen_docs.py

# Install into $(DESTDIR)$(PREFIX): a virtualenv under lib/ocid with the scripts linked into bin/,
# man pages, bash completions, the systemd unit and a default config (kept if one exists).
INSTALL_VENV = $(PREFIX)/lib/ocid/venv
install: deps
	$(PYTHON) -m venv $(DESTDIR)$(INSTALL_VENV)
	$(DESTDIR)$(INSTALL_VENV)/bin/pip install -q .
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/share/man/man1 $(DESTDIR)$(PREFIX)/share/man/man5 \
		$(DESTDIR)$(PREFIX)/share/man/man8 $(DESTDIR)/usr/share/bash-completion/completions \
		$(DESTDIR)/etc/systemd/system $(DESTDIR)/etc/ocid
	for tool in ocid ocic kpod; do ln -sf $(INSTALL_VENV)/bin/$$tool $(DESTDIR)$(PREFIX)/bin/$$tool; done
	install -m 644 man/*.1 $(DESTDIR)$(PREFIX)/share/man/man1/
	install -m 644 man/*.5 $(DESTDIR)$(PREFIX)/share/man/man5/
	install -m 644 man/*.8 $(DESTDIR)$(PREFIX)/share/man/man8/
	install -m 644 completions/bash/* $(DESTDIR)/usr/share/bash-completion/completions/
	sed 's|/usr/local/bin/ocid|$(PREFIX)/bin/ocid|' contrib/systemd/ocid.service > $(DESTDIR)/etc/systemd/system/ocid.service
	[ -e $(DESTDIR)/etc/ocid/ocid.conf ] || $(DESTDIR)$(INSTALL_VENV)/bin/ocid --config /dev/null config --default > $(DESTDIR)/etc/ocid/ocid.conf

clean:
	rm -rf $(VENV) build *.egg-info
