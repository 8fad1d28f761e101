package kmod

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

var testIndex = Index{Release: "6.1.0-test", Modules: []Module{
	{Name: "virtio_ring", Path: "kernel/drivers/virtio/virtio_ring.ko"},
	{Name: "virtio", Path: "kernel/drivers/virtio/virtio.ko", Depends: []string{"virtio_ring"}},
	{Name: "virtio_mmio", Depends: []string{"virtio", "virtio_ring"}, Aliases: []string{"acpi*:LNRO0005:*", "of:N*T*Cvirtio,mmio"}},
	{Name: "virtio_blk", Depends: []string{"virtio", "virtio_ring"}, Aliases: []string{"virtio:d00000002v*"}},
	{Name: "virtio_console", Depends: []string{"virtio", "virtio_ring"}, Aliases: []string{"virtio:d00000003v*"}},
	{Name: "failover"},
	{Name: "net_failover", Depends: []string{"failover"}},
	{Name: "virtio_net", Depends: []string{"virtio_ring", "virtio", "net_failover"}, Aliases: []string{"virtio:d00000001v*"}},
	{Name: "loop_a", Depends: []string{"loop_b"}},
	{Name: "loop_b", Depends: []string{"loop_a"}},
	{Name: "broken", Depends: []string{"missing"}},
}}

func TestLoadOrder(t *testing.T) {
	tests := []struct {
		names   []string
		want    []string
		wantErr string
	}{
		{names: []string{"virtio_blk"}, want: []string{"virtio_ring", "virtio", "virtio_blk"}},
		{names: []string{"virtio-net"}, want: []string{"virtio_ring", "virtio", "failover", "net_failover", "virtio_net"}},
		{names: []string{"virtio_mmio", "virtio_console", "virtio_blk"}, want: []string{"virtio_ring", "virtio", "virtio_mmio", "virtio_console", "virtio_blk"}},
		{names: []string{"virtio_blk", "virtio_blk"}, want: []string{"virtio_ring", "virtio", "virtio_blk"}},
		{names: nil, want: nil},
		{names: []string{"nope"}, wantErr: "module nope is not in the image"},
		{names: []string{"broken"}, wantErr: "module broken needs missing"},
		{names: []string{"loop_a"}, wantErr: "cycle"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.names, ","), func(t *testing.T) {
			got, err := testIndex.LoadOrder(tt.names...)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("order = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestMatch(t *testing.T) {
	tests := []struct {
		modalias string
		want     []string
	}{
		{"virtio:d00000002v00001AF4", []string{"virtio_blk"}},
		{"virtio:d00000003v00001AF4", []string{"virtio_console"}},
		{"acpi:LNRO0005:", []string{"virtio_mmio"}},
		{"virtio:d00000012v00001AF4", nil},
		{"pci:v00008086d00001237sv00001AF4sd00001100bc06sc00i00", nil},
		{"", nil},
	}
	for _, tt := range tests {
		if got := testIndex.Match(tt.modalias); !reflect.DeepEqual(got, tt.want) {
			t.Errorf("Match(%q) = %v, want %v", tt.modalias, got, tt.want)
		}
	}
}

func TestNormalize(t *testing.T) {
	for in, want := range map[string]string{
		"virtio-rng":                   "virtio_rng",
		"kernel/drivers/virtio-rng.ko": "virtio_rng",
		"virtio_blk":                   "virtio_blk",
	} {
		if got := Normalize(in); got != want {
			t.Errorf("Normalize(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestParseModinfoHostModule reads a real module when the machine has one.
func TestParseModinfoHostModule(t *testing.T) {
	matches, _ := filepath.Glob("/lib/modules/*/kernel/drivers/block/virtio_blk.ko")
	if len(matches) == 0 {
		t.Skip("no uncompressed virtio_blk.ko on this machine")
	}
	ko, err := os.ReadFile(matches[0])
	if err != nil {
		t.Fatal(err)
	}
	info, err := ParseModinfo(ko)
	if err != nil {
		t.Fatal(err)
	}
	if info.Name != "virtio_blk" || len(info.Aliases) == 0 {
		t.Fatalf("info = %+v", info)
	}
}

func TestParseModinfoRejectsGarbage(t *testing.T) {
	for _, in := range [][]byte{nil, []byte("not an elf"), []byte("\x7fELF\x02\x01\x01")} {
		if _, err := ParseModinfo(in); err == nil {
			t.Errorf("ParseModinfo(%q) succeeded", in)
		}
	}
}

func FuzzParseModinfo(f *testing.F) {
	f.Add([]byte("\x7fELF\x02\x01\x01\x00"))
	f.Fuzz(func(t *testing.T, data []byte) {
		info, err := ParseModinfo(data)
		if err == nil && info.Name == "" {
			t.Fatal("parsed a module without a name")
		}
	})
}
