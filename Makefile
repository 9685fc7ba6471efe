# drover: two commands for a new user (`make demo`, `make test`); everything else is set up by `make setup`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip

# Every Debian package drover and its test lab need. Keep one per line group, sorted by purpose.
DEB_PACKAGES := \
	krb5-kdc krb5-admin-server krb5-user libkrb5-dev \
	libsasl2-modules-gssapi-mit sasl2-bin \
	libvirt-daemon libvirt-daemon-driver-qemu libvirt-daemon-system libvirt-clients libvirt-dev \
	pkg-config libnss-wrapper iproute2 \
	qemu-system-x86 qemu-utils ipxe-qemu ovmf busybox-static linux-image-amd64 \
	postgresql \
	mmdebstrap squashfs-tools zstd xorriso openssh-client grub-pc-bin grub-efi-amd64-bin grub-common mtools dosfstools \
	syslinux-common syslinux isolinux pxelinux dnsmasq-base \
	collectd-core librrd8 victoria-metrics ipmitool \
	nfs-ganesha nfs-ganesha-vfs tgt libnfs-utils libiscsi-bin \
	chromium \
	python3-libvirt python3-gssapi python3-dbus python3-pyinotify python3-zeroconf

STAMP := $(VENV)/.setup-done

# The web UI's browser libraries, from npm at setup time into a gitignored static folder (never a CDN).
# noVNC is ES modules loaded as they are (core/ and vendor/pako/, no bundler); xterm's module build likewise.
NPM_PACKAGES := htmx.org@2.0.11 uplot@1.6.32 @novnc/novnc@1.7.0 @xterm/xterm@6.0.0
NPM_DIR := $(VENV)/npm
VENDOR_DIR := appliance/web/static/vendor
VENDORED := $(VENDOR_DIR)/htmx.min.js $(VENDOR_DIR)/uPlot.iife.min.js $(VENDOR_DIR)/uPlot.min.css \
	$(VENDOR_DIR)/novnc/core/rfb.js $(VENDOR_DIR)/xterm/xterm.mjs

.PHONY: setup test demo bench lint clean

setup: $(STAMP) $(VENDORED)

$(STAMP): pyproject.toml Makefile
	@missing=$$(dpkg-query -W -f='$${db:Status-Abbrev} $${Package}\n' $(DEB_PACKAGES) 2>/dev/null \
		| awk '$$1 == "ii" {print $$2}' | sort | comm -13 - <(tr ' ' '\n' <<< "$(DEB_PACKAGES)" | grep . | sort)); \
	if [ -n "$$missing" ]; then \
		echo "setup: installing Debian packages: $$missing"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[dev]'
	@touch $@

# One rule makes all of them (a grouped target: one npm install, not one per file).
$(VENDORED) &: Makefile
	mkdir -p $(NPM_DIR) $(VENDOR_DIR)
	npm install --prefix $(NPM_DIR) --no-save --no-audit --no-fund --loglevel=error $(NPM_PACKAGES)
	cp $(NPM_DIR)/node_modules/htmx.org/dist/htmx.min.js $(VENDOR_DIR)/htmx.min.js
	cp $(NPM_DIR)/node_modules/uplot/dist/uPlot.iife.min.js $(NPM_DIR)/node_modules/uplot/dist/uPlot.min.css $(VENDOR_DIR)/
	rm -rf $(VENDOR_DIR)/novnc $(VENDOR_DIR)/xterm
	mkdir -p $(VENDOR_DIR)/novnc $(VENDOR_DIR)/xterm
	cp -r $(NPM_DIR)/node_modules/@novnc/novnc/core $(NPM_DIR)/node_modules/@novnc/novnc/vendor \
		$(NPM_DIR)/node_modules/@novnc/novnc/LICENSE.txt $(VENDOR_DIR)/novnc/
	cp $(NPM_DIR)/node_modules/@xterm/xterm/lib/xterm.mjs $(NPM_DIR)/node_modules/@xterm/xterm/css/xterm.css \
		$(NPM_DIR)/node_modules/@xterm/xterm/LICENSE $(VENDOR_DIR)/xterm/
	touch $(VENDORED)

# Both cores: test modules are spread over two worker processes (a module stays on one, so its
# module-scoped rack and its boots stay together); TEST_WORKERS=0 runs them in this process.
TEST_WORKERS ?= 2
test: setup
	$(PY) -m pytest -q $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)

bench: setup
	$(PY) -m bench

# The appliance with its embedded defaults (SQLite, embedded KDC, boot service) and DEMO_NODES qemu
# nodes that PXE-boot from it and enrol themselves; Ctrl-C tears it all down. State lives in
# $(DEMO_DIR): running it again reuses the image, realm and database (the nodes come back as the same hosts).
DEMO_DIR ?= $(CURDIR)/.demo
DEMO_NODES ?= 2

demo: setup
	$(PY) -m tests.lab.demo --dir $(DEMO_DIR) --nodes $(DEMO_NODES)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
