package cli

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"reflect"
	"strings"
	"text/template"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/gondolin/gondolin/internal/termsafe"
)

// listing is how a listing command prints, docker's way: a table by
// default, --json, -q for the IDs alone (for xargs), or --format with a
// Go template run once per item.
type listing struct {
	asJSON bool
	quiet  bool
	format string
	tmpl   *template.Template // --format, compiled by check
}

func (l *listing) register(fs *pflag.FlagSet, what string) {
	fs.BoolVar(&l.asJSON, "json", false, "print JSON")
	fs.BoolVarP(&l.quiet, "quiet", "q", false, "print "+what+" only, one per line")
	fs.StringVar(&l.format, "format", "", "print each one through a Go template, e.g. '{{.ID}} {{.Name}}' (the fields of --json, by their Go names; {{json .}} prints one as JSON); --format json is --json")
}

// check sees the flags go together and compiles the template: a
// command's Args calls it, before anything is asked of the supervisor
// or the store.
func (l *listing) check() error {
	given := 0
	for _, set := range []bool{l.asJSON, l.quiet, l.format != ""} {
		if set {
			given++
		}
	}
	if given > 1 {
		return usageError("--json, -q and --format do not go together: pick one")
	}
	switch l.format {
	case "":
		return nil
	case "json":
		l.asJSON, l.format = true, ""
		return nil
	}
	t, err := template.New("--format").Funcs(template.FuncMap{
		"json": func(v any) (string, error) {
			b, err := json.Marshal(v)
			return string(b), err
		},
		"join": strings.Join,
	}).Option("missingkey=error").Parse(l.format)
	if err != nil {
		return usageError("--format: %s", strings.TrimPrefix(err.Error(), "template: "))
	}
	l.tmpl = t
	return nil
}

// args is a listing command's Args: none, and flags that go together.
func (l *listing) args(c *cobra.Command, args []string) error {
	if err := noArgs(c, args); err != nil {
		return err
	}
	return l.check()
}

// printListing prints items the way l asks: table prints the default
// view; id is what -q prints of one.
func printListing[T any](l *listing, items []T, id func(T) string, table func([]T) error) error {
	switch t := l.tmpl; {
	case l.asJSON:
		if items == nil {
			items = []T{} // [], never null
		}
		return printJSON(items)
	case l.quiet:
		for _, it := range items {
			fmt.Println(id(it))
		}
		return nil
	case t != nil:
		var b bytes.Buffer
		for _, it := range items {
			if err := t.Execute(&b, safeCopy(reflect.ValueOf(it)).Interface()); err != nil {
				return usageError("--format: %s", strings.TrimPrefix(err.Error(), "template: "))
			}
			b.WriteByte('\n')
		}
		// The fields are safe already (safeCopy); this is for the
		// template's own text.
		_, err := os.Stdout.WriteString(termsafe.Text(b.String()))
		return err
	}
	return table(items)
}

// safeCopy is a copy of v with every string in it (in fields, slices,
// maps and through pointers) made safe to print as one line: a field may
// hold what a guest or a registry chose (a stale reason, an image's
// label), and a template prints it raw, where a newline would fake a
// line of output and an escape would act on the terminal.
func safeCopy(v reflect.Value) reflect.Value {
	switch v.Kind() {
	case reflect.String:
		out := reflect.New(v.Type()).Elem()
		out.SetString(termsafe.String(v.String()))
		return out
	case reflect.Pointer:
		if v.IsNil() {
			return v
		}
		out := reflect.New(v.Type().Elem())
		out.Elem().Set(safeCopy(v.Elem()))
		return out
	case reflect.Struct:
		out := reflect.New(v.Type()).Elem()
		out.Set(v)
		for i := range v.NumField() {
			if out.Field(i).CanSet() {
				out.Field(i).Set(safeCopy(v.Field(i)))
			}
		}
		return out
	case reflect.Slice:
		if v.IsNil() {
			return v
		}
		out := reflect.MakeSlice(v.Type(), v.Len(), v.Len())
		for i := range v.Len() {
			out.Index(i).Set(safeCopy(v.Index(i)))
		}
		return out
	case reflect.Map:
		if v.IsNil() {
			return v
		}
		out := reflect.MakeMapWithSize(v.Type(), v.Len())
		for it := v.MapRange(); it.Next(); {
			out.SetMapIndex(safeCopy(it.Key()), safeCopy(it.Value()))
		}
		return out
	}
	return v
}
