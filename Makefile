# scbridge: build, install as a systemd service, test.
#
#   make build                  cargo build --release --locked
#   sudo make install           binary, unit, docs; example config if none yet
#   sudo make uninstall         binary, unit, docs (keeps /etc/scbridge)
#   make test | demo            scripts/test, scripts/demo
#   make verify-unit            systemd-analyze verify + security on the unit
#
# Variables: PREFIX (/usr/local), DESTDIR (staging root, empty), UNITDIR
# (/etc/systemd/system), CARGO_TARGET_DIR (target).
#
# The unit goes to /etc/systemd/system: this is an admin-installed service, not
# a distribution package, and /etc/systemd/system is where systemd looks first
# and where admins look. It is installed with `make install` and removed with
# `make uninstall`; local changes belong in drop-ins
# (/etc/systemd/system/scbridge.service.d/*.conf), which neither touches.
# Set UNITDIR=$(PREFIX)/lib/systemd/system to keep it out of /etc instead.

PREFIX ?= /usr/local
DESTDIR ?=
BINDIR ?= $(PREFIX)/bin
DOCDIR ?= $(PREFIX)/share/doc/scbridge
UNITDIR ?= /etc/systemd/system
# The daemon's default config directory; the unit refers to it as well.
CONFDIR := /etc/scbridge

CARGO ?= cargo
INSTALL ?= install
SYSTEMD_ANALYZE ?= systemd-analyze
# systemd-analyze security reports exposure x10: 11 means 1.1. verify-unit
# fails when the unit scores worse than this.
SECURITY_THRESHOLD ?= 11

CARGO_TARGET_DIR ?= target
export CARGO_TARGET_DIR
BIN := $(CARGO_TARGET_DIR)/release/scbridge

# Paths written into the unit file in the repository, replaced on install.
UNIT_BINDIR := /usr/local/bin
UNIT_DOCDIR := /usr/local/share/doc/scbridge

.PHONY: all build install uninstall test demo verify-unit

all: build

build:
	$(CARGO) build --release --locked

# Built only when missing, for verify-unit.
$(BIN):
	$(CARGO) build --release --locked

# Does not build: `sudo make install` must not run cargo as root.
install:
	@test -x "$(BIN)" || { echo "$(BIN) is missing: run 'make build' first (as your own user)" >&2; exit 1; }
	$(INSTALL) -d -m 0755 "$(DESTDIR)$(BINDIR)" "$(DESTDIR)$(UNITDIR)" "$(DESTDIR)$(DOCDIR)" "$(DESTDIR)$(CONFDIR)"
	$(INSTALL) -m 0755 "$(BIN)" "$(DESTDIR)$(BINDIR)/scbridge"
	sed -e 's|$(UNIT_BINDIR)/scbridge|$(BINDIR)/scbridge|g' -e 's|$(UNIT_DOCDIR)|$(DOCDIR)|g' \
		systemd/scbridge.service > "$(DESTDIR)$(UNITDIR)/scbridge.service.tmp"
	chmod 0644 "$(DESTDIR)$(UNITDIR)/scbridge.service.tmp"
	mv -f "$(DESTDIR)$(UNITDIR)/scbridge.service.tmp" "$(DESTDIR)$(UNITDIR)/scbridge.service"
	$(INSTALL) -m 0644 README.md docs/systemd.md bridge.toml.example \
		systemd/scbridge.service.d/credentials.conf.example "$(DESTDIR)$(DOCDIR)/"
	@# Never overwrite a config that is already there.
	@if [ -e "$(DESTDIR)$(CONFDIR)/bridge.toml" ]; then \
		echo "kept the existing $(DESTDIR)$(CONFDIR)/bridge.toml (the current example is $(DESTDIR)$(DOCDIR)/bridge.toml.example)"; \
	else \
		echo "$(INSTALL) -m 0644 bridge.toml.example $(DESTDIR)$(CONFDIR)/bridge.toml"; \
		$(INSTALL) -m 0644 bridge.toml.example "$(DESTDIR)$(CONFDIR)/bridge.toml"; \
	fi
	@# Root-only home for secret files that the unit passes as credentials.
	$(INSTALL) -d -m 0700 "$(DESTDIR)$(CONFDIR)/credentials"
	@echo
	@echo "Installed. Next steps:"
	@echo "  1. Edit $(CONFDIR)/bridge.toml, then check it:"
	@echo "       $(BINDIR)/scbridge check --config $(CONFDIR)/bridge.toml"
	@echo "  2. Secrets (SocketCluster token, MQTT password): see"
	@echo "       $(DOCDIR)/credentials.conf.example"
	@echo "  3. Start it, now and at every boot:"
	@echo "       systemctl daemon-reload"
	@echo "       systemctl enable --now scbridge"
	@echo "  4. Watch it:"
	@echo "       systemctl status scbridge"
	@echo "       journalctl -u scbridge -f"

uninstall:
	rm -f "$(DESTDIR)$(BINDIR)/scbridge" "$(DESTDIR)$(UNITDIR)/scbridge.service"
	rm -rf "$(DESTDIR)$(DOCDIR)"
	@echo
	@echo "Removed the binary, the unit and the docs. Kept $(CONFDIR) (config and credentials)"
	@echo "and any drop-ins in $(UNITDIR)/scbridge.service.d/."
	@echo "If the service was enabled, also run:"
	@echo "  systemctl disable --now scbridge && systemctl daemon-reload"

test:
	scripts/test

demo:
	scripts/demo

# verify needs every Exec*= binary to exist, so it checks a copy of the unit
# that runs the binary just built, with the credentials drop-in example
# applied; any warning fails. security --offline reads the unit file without a
# running systemd and fails above SECURITY_THRESHOLD.
verify-unit: $(BIN)
	@command -v $(SYSTEMD_ANALYZE) >/dev/null || { echo "$(SYSTEMD_ANALYZE) not found: apt-get install --no-install-recommends systemd" >&2; exit 1; }
	@set -e; dir=$$(mktemp -d); trap 'rm -rf "$$dir"' EXIT; \
	sed 's|$(UNIT_BINDIR)/scbridge|$(abspath $(BIN))|g' systemd/scbridge.service > "$$dir/scbridge.service"; \
	mkdir "$$dir/scbridge.service.d"; \
	cp systemd/scbridge.service.d/credentials.conf.example "$$dir/scbridge.service.d/credentials.conf"; \
	echo "$(SYSTEMD_ANALYZE) verify scbridge.service (ExecStart -> $(abspath $(BIN)))"; \
	out=$$($(SYSTEMD_ANALYZE) verify "$$dir/scbridge.service" 2>&1) || { echo "$$out"; exit 1; }; \
	if [ -n "$$out" ]; then echo "$$out"; echo "verify: warnings above" >&2; exit 1; fi; \
	echo "verify: clean"; \
	echo "$(SYSTEMD_ANALYZE) security --offline=true --threshold=$(SECURITY_THRESHOLD) scbridge.service"; \
	$(SYSTEMD_ANALYZE) security --offline=true --threshold=$(SECURITY_THRESHOLD) --no-pager "$$dir/scbridge.service"
