package sessions

import (
	"errors"
	"strings"
	"testing"

	"github.com/gondolin/gondolin/imagestore"
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
		if err != nil && !errors.Is(err, ErrInvalid) {
			t.Errorf("ParseMemory(%q) error %v does not wrap ErrInvalid", tt.in, err)
		}
	}
}

func TestSpecValidate(t *testing.T) {
	tests := []struct {
		name string
		spec Spec
		ok   bool
	}{
		{"empty", Spec{}, true},
		{"full", Spec{CPUs: 2, MemoryMiB: 512, Env: []string{"A=1", "_B=x=y"}, Cwd: "/work", Name: "dev-1"}, true},
		{"too many cpus", Spec{CPUs: 65}, false},
		{"negative cpus", Spec{CPUs: -1}, false},
		{"little memory", Spec{MemoryMiB: 10}, false},
		{"env without =", Spec{Env: []string{"A"}}, false},
		{"env bad key", Spec{Env: []string{"1A=x"}}, false},
		{"env key with space", Spec{Env: []string{"A B=x"}}, false},
		{"env NUL", Spec{Env: []string{"A=x\x00y"}}, false},
		{"relative cwd", Spec{Cwd: "tmp"}, false},
		{"name with slash", Spec{Name: "a/b"}, false},
		{"name dotdot", Spec{Name: ".."}, false},
		{"name too long", Spec{Name: string(make([]byte, 64))}, false},
	}
	for _, tt := range tests {
		err := tt.spec.Validate()
		if (err == nil) != tt.ok {
			t.Errorf("%s: err = %v, want ok=%v", tt.name, err, tt.ok)
		}
		if err != nil && !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: %v does not wrap ErrInvalid", tt.name, err)
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
