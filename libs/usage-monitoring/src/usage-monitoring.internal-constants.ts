/** @internal Normalised options (the raw ones live under MODULE_OPTIONS_TOKEN). */
export const NORMALIZED_OPTIONS = Symbol('USAGE_MONITORING_NORMALIZED_OPTIONS');

/** @internal The usage store. Inject with `@InjectUsageStore()`. */
export const USAGE_STORE = Symbol('USAGE_STORE');
