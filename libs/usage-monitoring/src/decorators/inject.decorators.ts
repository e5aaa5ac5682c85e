import { Inject } from '@nestjs/common';
import { MODULE_OPTIONS_TOKEN } from '../usage-monitoring.module-definition';
import { USAGE_STORE } from '../usage-monitoring.internal-constants';

/** Injects the `UsageStore` in use. */
export const InjectUsageStore = (): ParameterDecorator & PropertyDecorator => Inject(USAGE_STORE);

/** Injects the options as given to `forRoot` / `forRootAsync`. */
export const InjectUsageMonitoringOptions = (): ParameterDecorator & PropertyDecorator =>
  Inject(MODULE_OPTIONS_TOKEN);
