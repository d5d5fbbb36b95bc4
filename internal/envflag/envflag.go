// Package envflag defines command-line flags whose defaults come from
// environment variables, so the same binary is configured by flags on a
// laptop and by env in a container.
package envflag

import (
	"flag"
	"fmt"
	"os"
	"strconv"
)

// String defines a string flag defaulting to $env, then def.
func String(fs *flag.FlagSet, name, env, def, usage string) *string {
	if v, ok := os.LookupEnv(env); ok && v != "" {
		def = v
	}
	return fs.String(name, def, fmt.Sprintf("%s (env %s)", usage, env))
}

// Int defines an int flag defaulting to $env, then def. A malformed $env is
// reported by Check.
func Int(fs *flag.FlagSet, name, env string, def int, usage string) *int {
	if v, ok := os.LookupEnv(env); ok && v != "" {
		if n, err := strconv.Atoi(v); err == nil {
			def = n
		} else {
			bad = append(bad, fmt.Errorf("environment variable %s=%q is not a whole number", env, v))
		}
	}
	return fs.Int(name, def, fmt.Sprintf("%s (env %s)", usage, env))
}

// Bool defines a bool flag defaulting to $env, then def.
func Bool(fs *flag.FlagSet, name, env string, def bool, usage string) *bool {
	if v, ok := os.LookupEnv(env); ok && v != "" {
		if b, err := strconv.ParseBool(v); err == nil {
			def = b
		} else {
			bad = append(bad, fmt.Errorf("environment variable %s=%q is not true or false", env, v))
		}
	}
	return fs.Bool(name, def, fmt.Sprintf("%s (env %s)", usage, env))
}

var bad []error

// Check returns the first malformed environment value seen while defining flags.
func Check() error {
	if len(bad) > 0 {
		return bad[0]
	}
	return nil
}
