package sessions

import (
	"errors"
	"strings"
	"testing"

	"github.com/gondolin/gondolin/imagestore"
	"github.com/gondolin/gondolin/internal/errdefs"
	"github.com/gondolin/gondolin/internal/layout"
	"github.com/gondolin/gondolin/netpolicy"
)

func TestParseMemory(t *testing.T) {
	tests := []struct {
		in   string
		want int
		ok   bool
	}{
		{"256", 256, true},
		{"256M", 256, true},
		{"256m", 256, true},
		{"256MiB", 256, true},
		{"256MB", 256, true},
		{"1G", 1024, true},
		{"1.5G", 1536, true},
		{"2g", 2048, true},
		{"65536K", 64, true},
		{"1T", 1 << 20, true},
		{"63M", 0, false},
		{"2T", 0, false},
		{"0", 0, false},
		{"-1G", 0, false},
		{"", 0, false},
		{"G", 0, false},
		{"lots", 0, false},
		{"NaN", 0, false},
		{"1e3", 1000, true},
		{"12Q", 0, false},
	}
	for _, tt := range tests {
		got, err := ParseMemory(tt.in)
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("ParseMemory(%q) = %d, %v; want %d ok=%v", tt.in, got, err, tt.want, tt.ok)
		}
		if err != nil && !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("ParseMemory(%q) error %v does not wrap errdefs.ErrInvalid", tt.in, err)
		}
	}
}

func TestSpecValidate(t *testing.T) {
	tests := []struct {
		name  string
		spec  Spec
		field string // the flag the error names; "" when valid
	}{
		{"empty", Spec{}, ""},
		{"full", Spec{CPUs: 2, MemoryMiB: 512, Env: []string{"A=1", "_B=x=y"}, Cwd: "/work", Name: "dev-1"}, ""},
		{"too many cpus", Spec{CPUs: 65}, "--cpus"},
		{"negative cpus", Spec{CPUs: -1}, "--cpus"},
		{"little memory", Spec{MemoryMiB: 10}, "--memory"},
		{"env without =", Spec{Env: []string{"A"}}, "--env"},
		{"env bad key", Spec{Env: []string{"1A=x"}}, "--env"},
		{"env key with space", Spec{Env: []string{"A B=x"}}, "--env"},
		{"env NUL", Spec{Env: []string{"A=x\x00y"}}, "--env"},
		{"relative cwd", Spec{Cwd: "tmp"}, "--cwd"},
		{"name with slash", Spec{Name: "a/b"}, "--name"},
		{"name dotdot", Spec{Name: ".."}, "--name"},
		{"name too long", Spec{Name: string(make([]byte, 64))}, "--name"},
		{"bad allow pattern", Spec{Policy: &netpolicy.Policy{Allow: []string{"a b"}}}, "--allow-host"},
		{"secret without hosts", Spec{Policy: &netpolicy.Policy{Allow: []string{"*"}, Secrets: []netpolicy.Secret{{Name: "K"}}}}, "--host-secret"},
		{"policy without network", Spec{NoNetwork: true, Policy: &netpolicy.Policy{Allow: []string{"*"}}}, "--no-network"},
	}
	for _, tt := range tests {
		err := tt.spec.Validate()
		if (err == nil) != (tt.field == "") {
			t.Errorf("%s: err = %v, want an error naming %q", tt.name, err, tt.field)
		}
		if err != nil && !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("%s: %v does not wrap errdefs.ErrInvalid", tt.name, err)
		}
		if got := errdefs.FieldOf(err); got != tt.field {
			t.Errorf("%s: %v names %q, want %q", tt.name, err, got, tt.field)
		}
	}
}

// TestSpecFlagsBuild: the builder the CLI and the form share names the
// flag of every bad input, and builds what the flags say.
func TestSpecFlagsBuild(t *testing.T) {
	dir := t.TempDir()
	getenv := func(k string) string { return map[string]string{"TOKEN": "s3cret"}[k] }
	tests := []struct {
		name  string
		in    SpecFlags
		field string
		check func(*Spec) bool
	}{
		{"defaults", SpecFlags{}, "", func(s *Spec) bool { return s.Policy == nil && s.MemoryMiB == 0 }},
		{"memory", SpecFlags{Memory: "1G"}, "", func(s *Spec) bool { return s.MemoryMiB == 1024 }},
		{"bad memory", SpecFlags{Memory: "lots"}, "--memory", nil},
		{"hosts and secret", SpecFlags{Net: netpolicy.Flags{AllowHost: []string{"api.example.com"}, HostSecret: []string{"TOKEN@api.example.com"}}}, "",
			func(s *Spec) bool {
				return s.Policy != nil && len(s.Policy.Secrets) == 1 && s.SecretValues()["TOKEN"] == "s3cret"
			}},
		{"bad host", SpecFlags{Net: netpolicy.Flags{AllowHost: []string{"a b"}}}, "--allow-host", nil},
		{"secret not set", SpecFlags{Net: netpolicy.Flags{HostSecret: []string{"NOPE@api.example.com"}}}, "--host-secret", nil},
		{"network flag with --no-network", SpecFlags{NoNetwork: true, Net: netpolicy.Flags{AllowHost: []string{"x.com"}}}, "--no-network", nil},
		{"mount", SpecFlags{HostFS: []string{dir + ":/work:ro"}}, "", func(s *Spec) bool { return len(s.Mounts) == 1 && s.Mounts[0].ReadOnly }},
		{"mount missing", SpecFlags{HostFS: []string{dir + "/nope:/work"}}, "--mount-hostfs", nil},
		{"memfs relative", SpecFlags{MemFS: []string{"tmp"}}, "--mount-memfs", nil},
		{"bad name", SpecFlags{Name: "a/b"}, "--name", nil},
	}
	for _, tt := range tests {
		spec, err := tt.in.Build(getenv)
		if got := errdefs.FieldOf(err); got != tt.field || (err == nil) != (tt.field == "") {
			t.Errorf("%s: %v names %q, want %q", tt.name, err, got, tt.field)
			continue
		}
		if err != nil && !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("%s: %v is not of class invalid", tt.name, err)
		}
		if tt.check != nil && !tt.check(spec) {
			t.Errorf("%s: built %+v", tt.name, spec)
		}
	}
}

// TestSpecFlagsShapeFromEnv: GONDOLIN_CPUS and GONDOLIN_MEMORY size a
// VM whose flags leave the size open, and a bad value names its variable.
func TestSpecFlagsShapeFromEnv(t *testing.T) {
	tests := []struct {
		name      string
		in        SpecFlags
		cpus, mem string // the environment
		field     string
		wantCPUs  int
		wantMiB   int
	}{
		{name: "unset", wantCPUs: 0, wantMiB: 0},
		{name: "both from env", cpus: "2", mem: "1G", wantCPUs: 2, wantMiB: 1024},
		{name: "flags win", in: SpecFlags{CPUs: 4, Memory: "512M"}, cpus: "2", mem: "1G", wantCPUs: 4, wantMiB: 512},
		{name: "bad cpus", cpus: "two", field: "GONDOLIN_CPUS"},
		{name: "too many cpus", cpus: "65", field: "GONDOLIN_CPUS"},
		{name: "bad memory", mem: "lots", field: "GONDOLIN_MEMORY"},
		{name: "too little memory", mem: "8M", field: "GONDOLIN_MEMORY"},
		{name: "bad env, flag given", in: SpecFlags{CPUs: 1}, cpus: "two", wantCPUs: 1},
	}
	for _, tt := range tests {
		env := map[string]string{layout.EnvCPUs: tt.cpus, layout.EnvMemory: tt.mem}
		spec, err := tt.in.Build(func(k string) string { return env[k] })
		if got := errdefs.FieldOf(err); got != tt.field || (err == nil) != (tt.field == "") {
			t.Errorf("%s: %v names %q, want %q", tt.name, err, got, tt.field)
			continue
		}
		if err == nil && (spec.CPUs != tt.wantCPUs || spec.MemoryMiB != tt.wantMiB) {
			t.Errorf("%s: %d CPUs, %d MiB; want %d, %d", tt.name, spec.CPUs, spec.MemoryMiB, tt.wantCPUs, tt.wantMiB)
		}
	}
}

func TestApplyImageConfig(t *testing.T) {
	img := &imagestore.Image{Manifest: imagestore.Manifest{OCI: &imagestore.OCIConfig{
		Env: []string{"PATH=/opt/bin:/usr/bin", "LANG=C"}, WorkingDir: "/app"}}}
	spec := &Spec{Env: []string{"LANG=fr_FR"}}
	applyImageConfig(spec, img)
	if strings.Join(spec.Env, " ") != "PATH=/opt/bin:/usr/bin LANG=C LANG=fr_FR" || spec.Cwd != "/app" {
		t.Fatalf("spec %+v: the image's env must come first (the user's wins) and its workdir be the default", spec)
	}
	own := &Spec{Cwd: "/mine"}
	applyImageConfig(own, img)
	if own.Cwd != "/mine" {
		t.Fatalf("the user's --cwd was overridden: %q", own.Cwd)
	}
	plain := &Spec{Env: []string{"A=1"}}
	applyImageConfig(plain, &imagestore.Image{})
	if len(plain.Env) != 1 || plain.Cwd != "" {
		t.Fatalf("an image without OCI config changed the spec: %+v", plain)
	}
}
