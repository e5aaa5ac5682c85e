import { ConfigurableModuleBuilder } from '@nestjs/common';
import type { UsageMonitoringModuleExtras, UsageMonitoringModuleOptions } from './usage-monitoring.options';

export const { ConfigurableModuleClass, MODULE_OPTIONS_TOKEN, OPTIONS_TYPE, ASYNC_OPTIONS_TYPE } =
  new ConfigurableModuleBuilder<UsageMonitoringModuleOptions>({ moduleName: 'UsageMonitoring' })
    .setClassMethodName('forRoot')
    .setFactoryMethodName('createUsageMonitoringOptions')
    .setExtras<UsageMonitoringModuleExtras>(
      { isGlobal: true, healthController: true, adminController: undefined, dashboard: undefined },
      (definition, extras) => ({
        ...definition,
        global: extras.isGlobal,
      }),
    )
    .build();
