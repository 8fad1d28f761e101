package cli

import (
	"testing"
	"time"
)

func TestHumanBytes(t *testing.T) {
	for _, tc := range []struct {
		n    int64
		want string
	}{
		{0, "0B"},
		{1, "1B"},
		{1023, "1023B"},
		{1024, "1.0KiB"},
		{1536, "1.5KiB"},
		{1024*1024 - 1, "1024.0KiB"}, // rounds up within its unit, never to the next
		{1024 * 1024, "1.0MiB"},
		{256 << 20, "256.0MiB"},
		{3 << 30, "3.0GiB"},
		{5 << 40, "5.0TiB"},
		{7 << 50, "7.0PiB"},
		{1 << 62, "4.0EiB"},
		{-1, "-1B"},
	} {
		t.Run(tc.want, func(t *testing.T) {
			if got := humanBytes(tc.n); got != tc.want {
				t.Errorf("humanBytes(%d) = %q, want %q", tc.n, got, tc.want)
			}
		})
	}
}

func TestHumanAge(t *testing.T) {
	for _, tc := range []struct {
		d    time.Duration
		want string
	}{
		{0, "0s"},
		{-5 * time.Second, "-5s"}, // a clock that stepped back
		{999 * time.Millisecond, "0s"},
		{59 * time.Second, "59s"},
		{time.Minute, "1m"},
		{59*time.Minute + 59*time.Second, "59m"},
		{time.Hour, "1h"},
		{47*time.Hour + 59*time.Minute, "47h"},
		{48 * time.Hour, "2d"},
		{71 * time.Hour, "2d"},
		{400 * 24 * time.Hour, "400d"},
	} {
		t.Run(tc.d.String(), func(t *testing.T) {
			if got := humanAge(tc.d); got != tc.want {
				t.Errorf("humanAge(%v) = %q, want %q", tc.d, got, tc.want)
			}
		})
	}
}

func TestDash(t *testing.T) {
	for in, want := range map[string]string{"": "-", "x": "x", "-": "-"} {
		if got := dash(in); got != want {
			t.Errorf("dash(%q) = %q, want %q", in, got, want)
		}
	}
}
