package cli

import (
	"github.com/gondolin/gondolin/sessions"
	"github.com/spf13/pflag"
)

// vmFlags are the flags every command that creates a VM shares.
type vmFlags struct {
	image  string
	env    []string
	cwd    string
	cpus   int
	memory string
	name   string
	cold   bool
}

func (f *vmFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&f.image, "image", "", "guest image (name:tag, name, or image ID; default $GONDOLIN_DEFAULT_IMAGE or default:latest)")
	fs.StringArrayVar(&f.env, "env", nil, "set an environment variable in the guest, KEY=VALUE (repeatable; not for secrets)")
	fs.StringVar(&f.cwd, "cwd", "", "working directory in the guest")
	fs.IntVar(&f.cpus, "cpus", 0, "virtual CPUs (default 1)")
	fs.StringVar(&f.memory, "memory", "", "guest memory, e.g. 512M or 2G (default 256M)")
	fs.BoolVar(&f.cold, "cold", false, "boot the image instead of cloning its saved template")
}

func (f *vmFlags) spec() (*sessions.Spec, error) {
	spec := &sessions.Spec{Image: f.image, Env: f.env, Cwd: f.cwd, CPUs: f.cpus, Name: f.name, Cold: f.cold}
	if f.memory != "" {
		mib, err := sessions.ParseMemory(f.memory)
		if err != nil {
			return nil, err
		}
		spec.MemoryMiB = mib
	}
	return spec, spec.Validate()
}
