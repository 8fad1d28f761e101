package progress

import (
	"bytes"
	"os"
	"strings"
	"testing"
	"time"
)

func TestLineTerminal(t *testing.T) {
	var buf bytes.Buffer
	l := newLine(&buf, true)
	clock := time.Unix(0, 0)
	l.now = func() time.Time { return clock }
	l.Phase("download")
	l.Step(1, 3)
	clock = clock.Add(10 * time.Millisecond)
	l.Step(2, 3) // too soon: not drawn
	l.Step(3, 3) // last step: always drawn
	clock = clock.Add(time.Second)
	l.Phase("extract")
	l.Done()
	got := buf.String()
	for _, want := range []string{"download 1/3", "download 3/3", "download (1.01s)\n", "extract (0s)\n"} {
		if !strings.Contains(got, want) {
			t.Errorf("output %q lacks %q", got, want)
		}
	}
	if strings.Contains(got, "2/3") {
		t.Errorf("output %q redrew too often", got)
	}
}

func TestLineNotTerminal(t *testing.T) {
	var buf bytes.Buffer
	l := newLine(&buf, false)
	l.Phase("download")
	l.Step(1, 2)
	l.Warnf("ldconfig not found")
	l.Done()
	if got, want := buf.String(), "warning: ldconfig not found\n"; got != want {
		t.Fatalf("output %q, want %q", got, want)
	}
}

func TestNewOnFileIsQuiet(t *testing.T) {
	f, err := os.CreateTemp(t.TempDir(), "out")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r := New(f)
	r.Phase("x")
	r.Step(1, 1)
	r.Done()
	if st, _ := f.Stat(); st.Size() != 0 {
		t.Fatalf("wrote %d bytes to a non-terminal", st.Size())
	}
	Discard.Phase("x")
	Discard.Step(1, 2)
	Discard.Warnf("x")
	Discard.Done()
}
