// Package config loads meshd's configuration: a YAML file, then MESHD_*
// environment variables, then command-line flags (flags win), over built-in
// defaults, through viper.
//
// Every key is declared once in Keys, which drives defaults, flags, the
// environment names and the README's table. Values are parsed strictly: a
// bad value is an *Error naming the key, the value and what was expected,
// reported before meshd touches anything.
package config
