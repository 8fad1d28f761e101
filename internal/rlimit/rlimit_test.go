package rlimit

import (
	"testing"

	"golang.org/x/sys/unix"
)

func TestRaiseNOFILE(t *testing.T) {
	var orig unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &orig); err != nil {
		t.Fatal(err)
	}
	if orig.Max < 256 {
		t.Skipf("hard RLIMIT_NOFILE is %d", orig.Max)
	}
	t.Cleanup(func() { unix.Setrlimit(unix.RLIMIT_NOFILE, &orig) })
	tests := []struct {
		name       string
		soft, want uint64
	}{
		{"lowered", orig.Max / 2, orig.Max},
		{"default", 128, orig.Max},
		{"at the hard limit", orig.Max, orig.Max},
		// Where Go's runtime leaves it; children get their limit back.
		{"one below, as Go sets it", orig.Max - 1, orig.Max - 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &unix.Rlimit{Cur: tt.soft, Max: orig.Max}); err != nil {
				t.Fatal(err)
			}
			got, err := RaiseNOFILE()
			if err != nil {
				t.Fatal(err)
			}
			var now unix.Rlimit
			unix.Getrlimit(unix.RLIMIT_NOFILE, &now)
			if got != tt.want || now.Cur != tt.want || now.Max != orig.Max {
				t.Errorf("from %d: RaiseNOFILE = %d, limit now %d/%d; want %d/%d", tt.soft, got, now.Cur, now.Max, tt.want, orig.Max)
			}
		})
	}
}
