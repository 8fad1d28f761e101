package vm

import (
	"strings"
	"testing"
)

func TestQEMUArgs(t *testing.T) {
	base := Config{Dir: "/run/x", Name: "gd", Kernel: "/k", Initramfs: "/i", CPUs: 2, MemoryMiB: 512, Accel: TCG}
	tests := []struct {
		name    string
		cfg     func(c Config) Config
		want    []string // substrings of the joined command line
		notWant []string
	}{
		{name: "microvm tcg", cfg: func(c Config) Config { return c },
			want:    []string{"-M microvm,acpi=on", "-accel tcg", "-m 512M", "-smp 2", "virtio-mmio.force-legacy=false", "-no-reboot", "-nodefaults", "tsc_early_khz=2600000", "name=org.gondolin.agent", "name=org.gondolin.fs", "server=on,wait=off"},
			notWant: []string{"-incoming", "virtio-blk", "netdev", "gondolin.root", "-cpu host "}},
		{name: "kvm never bare host", cfg: func(c Config) Config { c.Accel = KVM; return c },
			want: []string{"-accel kvm", "-cpu host,-arch-capabilities"}},
		{name: "disk", cfg: func(c Config) Config { c.Backing = "/b"; return c },
			want: []string{"virtio-blk-device,drive=root", "file=/run/x/disk.qcow2", "gondolin.root=/dev/vda"}},
		{name: "network", cfg: func(c Config) Config { c.Network = true; return c },
			want: []string{"-netdev stream,id=net0,server=on,addr.type=unix,addr.path=/run/x/net.sock", "mac=" + GuestMAC}},
		{name: "restore quotes the path", cfg: func(c Config) Config { c.Restore = "/a b/it's"; return c },
			want: []string{`-incoming exec:zstd -dcq '/a b/it'\''s'`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			line := strings.Join(qemuArgs(tt.cfg(base), 2600000), " ")
			for _, w := range tt.want {
				if !strings.Contains(line, w) {
					t.Errorf("missing %q in %s", w, line)
				}
			}
			for _, w := range tt.notWant {
				if strings.Contains(line, w) {
					t.Errorf("unexpected %q in %s", w, line)
				}
			}
		})
	}
}

func TestConfigValidate(t *testing.T) {
	ok := Config{Dir: "/run/x", Kernel: "/k", Initramfs: "/i", Accel: TCG}
	ok.fill()
	if err := ok.Validate(); err != nil {
		t.Fatal(err)
	}
	bad := map[string]func(c *Config){
		"relative dir":  func(c *Config) { c.Dir = "run" },
		"long dir":      func(c *Config) { c.Dir = "/" + strings.Repeat("d", 120) },
		"no kernel":     func(c *Config) { c.Kernel = "" },
		"too many cpus": func(c *Config) { c.CPUs = 65 },
		"little memory": func(c *Config) { c.MemoryMiB = 32 },
		"unknown accel": func(c *Config) { c.Accel = "hvf" },
	}
	for name, mutate := range bad {
		c := ok
		mutate(&c)
		if err := c.Validate(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestParseAccel(t *testing.T) {
	for in, want := range map[string]Accel{"kvm": KVM, "tcg": TCG} {
		if got, auto, err := ParseAccel(in); got != want || auto || err != nil {
			t.Errorf("ParseAccel(%q) = %v %v %v", in, got, auto, err)
		}
	}
	for _, in := range []string{"", "auto"} {
		if _, auto, err := ParseAccel(in); !auto || err != nil {
			t.Errorf("ParseAccel(%q) not auto", in)
		}
	}
	if _, _, err := ParseAccel("KVM"); err == nil {
		t.Error("ParseAccel accepted KVM")
	}
}

func TestQEMUArgsQ35(t *testing.T) {
	c := Config{Dir: "/run/x", Kernel: "/k", Initramfs: "/i", Backing: "/b", Network: true, MachineType: Q35}
	c.fill()
	line := strings.Join(qemuArgs(c, 0), " ")
	for _, w := range []string{"-M q35", "virtio-serial-pci", "virtio-blk-pci", "virtio-net-pci"} {
		if !strings.Contains(line, w) {
			t.Errorf("missing %q in %s", w, line)
		}
	}
	if strings.Contains(line, "-device virtio-blk-device") || strings.Contains(line, "tsc_early_khz") {
		t.Errorf("microvm devices or a bogus TSC on q35: %s", line)
	}
}

func TestQEMUEnv(t *testing.T) {
	got := qemuEnv([]string{"PATH=/bin", "GH_TOKEN=secret", "TMPDIR=/t", "HOME=/h", "PATHOLOGY=x"})
	if strings.Join(got, " ") != "PATH=/bin TMPDIR=/t" {
		t.Fatalf("qemuEnv = %q", got)
	}
}
